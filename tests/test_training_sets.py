"""Fine-tuning sets: BEIR training splits, hold-out, and BGE/DPR jsonl import/export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contriever_repro.data.beir import _read_qrels_lines, read_corpus
from contriever_repro.data.training_sets import (
    convert_training_split,
    holdout_dev,
    passage_id_for,
    query_id_for,
    read_pairs_jsonl,
    records_from_qrels,
    write_pairs_jsonl,
)
from contriever_repro.errors import InputError
from contriever_repro.io import read_table, write_table


def _qrels(rows):
    df = pd.DataFrame(rows, columns=["query_id", "doc_id", "relevance"])
    df["line"] = range(2, 2 + len(df))
    return df


def test_records_keep_qrels_order_and_the_relevance_threshold():
    qrels = _qrels([("b", "d3", 1), ("a", "d2", 2), ("b", "d1", 1), ("a", "d1", 0), ("a", "d3", 1)])
    rec = records_from_qrels(qrels, ["d1", "d2", "d3"], "train.tsv")
    assert rec["query_id"].tolist() == ["b", "a"]
    assert rec["positive_ids"].tolist() == [["d3", "d1"], ["d2", "d3"]]
    assert rec["negative_ids"].tolist() == [[], []]
    assert rec["negative_kind"].tolist() == ["none", "none"]

    two = records_from_qrels(qrels[qrels["query_id"] == "a"], ["d1", "d2", "d3"], "t", 2)
    assert two["positive_ids"].tolist() == [["d2"]]


def test_a_query_without_positive_is_an_error_naming_it():
    qrels = _qrels([("a", "d1", 1), ("z", "d1", 0), ("y", "d2", 0)])
    with pytest.raises(InputError, match=r"train\.tsv:3: 2 training queries have no .*'z', 'y'"):
        records_from_qrels(qrels, ["d1", "d2"], "train.tsv")


def _beir_folder(tmp_path: Path, qrels_lines: list[str]) -> tuple[Path, Path]:
    folder = tmp_path / "ds"
    (folder / "qrels").mkdir(parents=True)
    queries = [{"_id": q, "text": f"query {q}"} for q in ("q1", "q2", "q3")]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels_lines)
    )
    corpus = tmp_path / "corpus.parquet"
    docs = pd.DataFrame({"doc_id": ["d1", "d2", "d3"], "title": "", "text": ["a", "b", "c"]})
    write_table(docs, corpus, "corpus")
    return folder, corpus


def test_convert_training_split_writes_queries_and_records(tmp_path):
    folder, corpus = _beir_folder(tmp_path, ["q2\td1\t1", "q2\td3\t1", "q1\td2\t1"])
    counts = convert_training_split(
        folder, "train", corpus, tmp_path / "q.parquet", tmp_path / "r.parquet"
    )
    assert counts == {"queries": 2, "positives": 3, "qrels_rows": 3, "corpus_docs": 3}
    queries = read_table(tmp_path / "q.parquet", "queries")
    assert queries["query_id"].tolist() == ["q1", "q2"]  # queries.jsonl order, q3 unused
    records = read_table(tmp_path / "r.parquet", "records")
    assert records["query_id"].tolist() == ["q2", "q1"]
    assert [list(p) for p in records["positive_ids"]] == [["d1", "d3"], ["d2"]]
    schema = pq.read_schema(tmp_path / "r.parquet")
    assert schema.field("negative_ids").type == pa.list_(pa.string())  # though all empty


def test_a_qrels_doc_missing_from_the_corpus_names_file_line_doc_and_query(tmp_path):
    folder, corpus = _beir_folder(tmp_path, ["q2\td1\t1", "q1\td9\t1", "q1\td2\t1"])
    out_q, out_r = tmp_path / "q.parquet", tmp_path / "r.parquet"
    qrels_path = folder / "qrels" / "train.tsv"
    with pytest.raises(InputError, match=rf"{qrels_path}:3: corpus-id 'd9' \(query 'q1'\)"):
        convert_training_split(folder, "train", corpus, out_q, out_r)
    assert not out_q.exists() and not out_r.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.parquet", "ds"]


def test_a_query_without_positive_in_a_split_writes_nothing(tmp_path):
    folder, corpus = _beir_folder(tmp_path, ["q2\td1\t1", "q1\td2\t0"])
    out_q, out_r = tmp_path / "q.parquet", tmp_path / "r.parquet"
    with pytest.raises(InputError, match=r"train\.tsv:3: 1 training query has no .*'q1'"):
        convert_training_split(folder, "train", corpus, out_q, out_r)
    assert not out_q.exists() and not out_r.exists()


def test_holdout_is_seeded_and_floors():
    records = pd.DataFrame({"query_id": [str(i) for i in range(25)]})
    train, dev = holdout_dev(records, 0.1, seed=3)
    assert (len(train), len(dev)) == (23, 2)
    assert sorted(train["query_id"].tolist() + dev["query_id"].tolist(), key=int) == [
        str(i) for i in range(25)
    ]
    assert train["query_id"].map(int).is_monotonic_increasing
    again_train, again_dev = holdout_dev(records, 0.1, seed=3)
    assert again_dev.equals(dev) and again_train.equals(train)
    other = {tuple(holdout_dev(records, 0.1, seed=s)[1]["query_id"]) for s in range(6)}
    assert len(other) > 1
    with pytest.raises(InputError):
        holdout_dev(records, 1.0, seed=0)


def test_scifact_train_holdout_leaves_729(shared_data):
    folder = shared_data / "beir" / "scifact"
    qrels = _read_qrels_lines(folder / "qrels" / "train.tsv")
    corpus_ids = read_corpus(folder / "corpus.jsonl")["doc_id"]
    records = records_from_qrels(qrels, corpus_ids, "scifact train")
    assert len(records) == 809
    train, dev = holdout_dev(records, 0.1, seed=0)
    assert (len(train), len(dev)) == (729, 80)
    assert not set(train["query_id"]) & set(dev["query_id"])


def _write_lines(path: Path, objs) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def test_bge_lines_merge_duplicate_queries_and_drop_negatives_that_are_positives(tmp_path):
    path = _write_lines(
        tmp_path / "t.jsonl",
        [
            {"query": "what is a", "pos": ["A is a letter."], "neg": ["B is not."]},
            {"query": "what is b", "pos": ["B is not."]},
            {"query": "what is a", "pos": ["a, lower case"], "neg": ["A is a letter."]},
        ],
    )
    queries, corpus, records = read_pairs_jsonl(path)
    qa, qb = query_id_for("what is a"), query_id_for("what is b")
    pa_, pb, pl = (passage_id_for("", t) for t in ("A is a letter.", "B is not.", "a, lower case"))
    assert queries["query_id"].tolist() == [qa, qb] and qa.startswith("q") and len(qa) == 17
    assert records["positive_ids"].tolist() == [[pa_, pl], [pb]]
    assert records["negative_ids"].tolist() == [[pb], []]
    assert records["negative_kind"].tolist() == ["imported", "none"]
    assert dict(zip(corpus["doc_id"], corpus["text"], strict=True)) == {
        pa_: "A is a letter.",
        pb: "B is not.",
        pl: "a, lower case",
    }


def test_dpr_json_uses_passage_ids_and_ignores_random_negatives(tmp_path, caplog):
    data = [
        {
            "question": "who?",
            "answers": ["x"],
            "positive_ctxs": [{"title": "T", "text": "gold", "passage_id": 17}],
            "negative_ctxs": [{"title": "", "text": "random"}],
            "hard_negative_ctxs": [{"title": "H", "text": "hard"}],
        }
    ]
    path = tmp_path / "dpr.json"
    path.write_text(json.dumps(data))
    with caplog.at_level("INFO"):
        queries, corpus, records = read_pairs_jsonl(path)
    assert records["positive_ids"].tolist() == [["17"]]
    assert records["negative_ids"].tolist() == [[passage_id_for("H", "hard")]]
    assert records["negative_kind"].tolist() == ["imported"]
    assert "random" not in corpus["text"].tolist()
    assert corpus.set_index("doc_id").loc["17", "title"] == "T"
    assert "negative_ctxs" in caplog.text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "x", "pos": ["a"]', "malformed JSON"),
        ('{"pos": ["a"]}', "missing query"),
        ('{"query": "x", "pos": []}', "'pos' must be a non-empty list"),
        ('{"question": "x", "positive_ctxs": []}', "'positive_ctxs' must be a non-empty"),
        ('{"question": "x", "positive_ctxs": [{"title": "t"}]}', r"positive_ctxs\[0\]: 'text'"),
        ('{"query": "", "pos": ["a"]}', "'query' is not a non-empty string"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
    path = _write_lines(tmp_path / "t.jsonl", [{"query": "ok", "pos": ["a"]}, "", line])
    with pytest.raises(InputError, match=rf"{path}:3: .*{message}"):
        read_pairs_jsonl(path)


def test_a_bad_entry_of_a_json_list_is_named(tmp_path):
    path = tmp_path / "dpr.json"
    path.write_text(json.dumps([{"question": "q", "positive_ctxs": [{"text": "a"}]}, {"x": 1}]))
    with pytest.raises(InputError, match=rf"{path}: entry 1: missing query"):
        read_pairs_jsonl(path)


@pytest.mark.parametrize("style", ["bge", "dpr"])
def test_jsonl_round_trip(tmp_path, style):
    src = _write_lines(
        tmp_path / "in.jsonl",
        [
            {
                "question": "q one",
                "positive_ctxs": [{"title": "" if style == "bge" else "T1", "text": "one"}],
                "hard_negative_ctxs": [{"title": "", "text": "two"}],
            },
            {"question": "q two", "positive_ctxs": [{"title": "", "text": "two"}]},
        ],
    )
    tables = read_pairs_jsonl(src)
    out = tmp_path / "out.jsonl"
    assert write_pairs_jsonl(*tables, out, style=style) == 2
    first = json.loads(out.read_text().splitlines()[0])
    assert ("query" in first) == (style == "bge")
    again = read_pairs_jsonl(out)
    for before, after in zip(tables, again, strict=True):
        pd.testing.assert_frame_equal(before, after)


def test_export_of_an_unknown_passage_writes_nothing(tmp_path):
    queries = pd.DataFrame({"query_id": ["q"], "text": ["x"]})
    corpus = pd.DataFrame({"doc_id": ["d1"], "title": [""], "text": ["a"]})
    records = pd.DataFrame(
        {"query_id": ["q"], "positive_ids": [["d2"]], "negative_ids": [[]], "negative_kind": "none"}
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError, match="'d2' of query 'q' is not in the corpus"):
        write_pairs_jsonl(queries, corpus, records, out)
    assert list(tmp_path.iterdir()) == []


def test_a_users_jsonl_becomes_a_beir_folder_and_comes_back_out(tmp_path):
    """scripts/training_pairs.py import → the BEIR folder the rules convert → export."""
    from contriever_repro.data.beir import load_beir_folder

    root = Path(__file__).resolve().parents[1]
    lines = [
        {"query": "what is a cat", "pos": ["a cat is a small feline"], "neg": ["dogs bark"]},
        {"query": "capital of france", "pos": ["paris is the capital", "paris, france"]},
    ]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    env = {**os.environ, "PYTHONPATH": str(root / "lib")}
    script = str(root / "scripts" / "training_pairs.py")
    folder = tmp_path / "mine"
    done = subprocess.run([sys.executable, script, "import", "--jsonl", str(src), "--out",
                           str(folder)], env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 negatives" in done.stderr
    corpus, queries, qrels = load_beir_folder(folder, "train")
    assert len(corpus) == 4 and len(queries) == 2 and len(qrels) == 3
    write_table(corpus, tmp_path / "corpus.parquet", "corpus")
    convert_training_split(folder, "train", tmp_path / "corpus.parquet",
                           tmp_path / "q.parquet", tmp_path / "r.parquet")  # fmt: skip
    out = tmp_path / "back.jsonl"
    cmd = [sys.executable, script, "export", "--queries", str(tmp_path / "q.parquet"),
           "--records", str(tmp_path / "r.parquet"), "--corpus",
           str(tmp_path / "corpus.parquet"), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    back = {x["query"]: sorted(x["pos"]) for x in map(json.loads, out.read_text().splitlines())}
    assert back == {x["query"]: sorted(x["pos"]) for x in lines}
    assert len(read_table(tmp_path / "r.parquet")) == 2
