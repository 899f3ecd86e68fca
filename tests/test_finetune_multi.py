"""Fine-tuning on several data sets at once (namespaced ids) and on a passage pool read
down to the passages the training data names (passage_pool: referenced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contriever_repro.data.mined import write_mined
from contriever_repro.errors import InputError
from contriever_repro.io import write_table
from contriever_repro.models.fingerprint import model_fingerprint
from contriever_repro.models.tiny_bert import SPECIAL_TOKENS, build_tokenizer
from contriever_repro.training.config import FinetuneConfig
from contriever_repro.training.finetune import load_training_data
from contriever_repro.training.finetune_batches import FinetuneBatches, TrainingExamples
from contriever_repro.training.finetune_data import read_passages

ROOT = Path(__file__).resolve().parents[1]
N_QUERIES, N_PASSAGES = 12, 60


def _dataset(root: Path, name: str, mined: bool = False, negatives: bool = True) -> dict:
    """Data set `name` with the ids every data set uses (Q0.., D0..): query i has
    positive D_i, record negatives D_{i+20}, D_{i+21}, and (mined) D_{i+40}, D_{i+41},
    D_{i+42}; texts start with `name`, so a passage shows which data set it came from."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    corpus = pd.DataFrame(
        {
            "doc_id": [f"D{k}" for k in range(N_PASSAGES)],
            "title": "",
            "text": [f"{name} p{k}" for k in range(N_PASSAGES)],
        }
    )
    queries = pd.DataFrame(
        {
            "query_id": [f"Q{i}" for i in range(N_QUERIES + 1)],  # Q12: in no record
            "text": [f"{name} q{i}" for i in range(N_QUERIES + 1)],
        }
    )
    records = pd.DataFrame(
        {
            "query_id": [f"Q{i}" for i in range(N_QUERIES)],
            "positive_ids": [[f"D{i}"] for i in range(N_QUERIES)],
            "negative_ids": [
                [f"D{i + 20}", f"D{i + 21}"] if negatives else [] for i in range(N_QUERIES)
            ],
            "negative_kind": "imported" if negatives else "none",
        }
    )
    out = {"corpus": folder / "corpus.parquet", "queries": folder / "queries.parquet"}
    out["records"] = folder / "records.parquet"
    # small row groups, so that the referenced pool can skip some
    table = pa.Table.from_pandas(corpus, preserve_index=False)
    pq.write_table(table, out["corpus"], row_group_size=10)
    write_table(queries, out["queries"], "queries")
    write_table(records, out["records"], "records")
    if mined:
        rows = [
            (f"Q{i}", f"D{i + 40 + j}", j + 1, 1.0 - 0.1 * j, 2.0)
            for i in range(N_QUERIES)
            for j in range(3)
        ]
        rows.append(("Q12", "D59", 1, 1.0, 2.0))  # a query that is not trained on
        df = pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score", "positive_score"])
        out["mined"] = folder / "mined.parquet"
        write_mined(df, out["mined"], {"model_fingerprint": model_fingerprint(root / "phase1")})
    return out


@pytest.fixture
def data(tmp_path):
    model = tmp_path / "phase1"  # what the fingerprint reads: config and weights
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    return {
        "model": model,
        "a": _dataset(tmp_path, "a", mined=True),
        "b": _dataset(tmp_path, "b", mined=True),
    }


@pytest.fixture(scope="module")
def tokenizer():
    words = [f"q{i}" for i in range(N_QUERIES + 1)] + [f"p{k}" for k in range(N_PASSAGES)]
    return build_tokenizer(list(SPECIAL_TOKENS) + words + ["a", "b"])


def config(**overrides) -> FinetuneConfig:
    return FinetuneConfig.from_dict("m", {"device": "cpu", "nodes": 1, **overrides})


def load(cfg, data, names, mined=False, **kw):
    return load_training_data(
        cfg,
        [data[n]["corpus"] for n in names],
        [data[n]["queries"] for n in names],
        [data[n]["records"] for n in names],
        mined=[data[n]["mined"] for n in names] if mined else None,
        mined_by_model=data["model"] if mined else None,
        **kw,
    )


def texts(examples: TrainingExamples, positions) -> list[str]:
    return examples.passage_texts.take(pa.array(np.asarray(positions))).to_pylist()


def batches(examples, tokenizer, n=12, **kw) -> list[tuple[np.ndarray, np.ndarray, int]]:
    ds = FinetuneBatches(examples, tokenizer, 4, seed=5, **kw)
    return [ds.draw(b) for b in range(n)]


# --------------------------------------------------------------------------- data sets


def test_two_data_sets_with_colliding_ids_make_one_namespaced_training_set(data):
    loaded = load(config(data=["a", "b"]), data, ["a", "b"])
    ex = loaded.examples
    assert ex.n_examples == 2 * N_QUERIES and ex.n_passages == 2 * N_PASSAGES
    assert {"a/Q0", "b/Q0"} <= set(ex.query_ids) and "a/Q12" not in set(ex.query_ids)
    assert {"a/D0", "b/D0"} <= set(ex.passage_ids)
    query_texts = ex.query_texts.to_pylist()
    for i, qid in enumerate(ex.query_ids):
        name, local = qid.split("/")
        assert query_texts[i] == f"{name} q{local[1:]}"
        # the positive is this data set's D_i, not the other's passage of the same id
        assert texts(ex, ex.positives(i)) == [f"{name} p{local[1:]}"]
        assert all(t.startswith(f"{name} ") for t in texts(ex, ex.hard(i)))
    assert loaded.identity == {
        "train_queries": 24,
        "passages": 120,
        "dev_queries": 0,
        "mined_by_fingerprint": None,
        "datasets": {
            "a": {"train_queries": 12, "passages": N_PASSAGES},
            "b": {"train_queries": 12, "passages": N_PASSAGES},
        },
    }


def test_batches_draw_from_both_data_sets(data, tokenizer):
    cfg = config(data=["a", "b"], mined_by="p1", hard_ratio=0.5, n_negatives=2)
    ex = load(cfg, data, ["a", "b"], mined=True).examples
    seen, crossing = set(), 0
    for examples, passages, _ in batches(ex, tokenizer, n_negatives=2, hard_ratio=0.5):
        golds, negatives = passages[:4], passages[4:].reshape(4, 2)
        for row, i in enumerate(examples):
            name = ex.query_ids[i].split("/")[0]
            seen.add(name)
            assert ex.passage_ids[golds[row]].startswith(f"{name}/")
            hard = set(ex.hard(i).tolist())
            for neg in negatives[row]:
                if neg in hard:  # hard negatives are the query's own data set's
                    assert ex.passage_ids[neg].startswith(f"{name}/")
                else:  # random ones come from every data set's passages
                    crossing += not ex.passage_ids[neg].startswith(f"{name}/")
    assert seen == {"a", "b"} and crossing > 0


def test_one_data_set_keeps_its_ids_and_identity(data):
    a = data["a"]
    one = load_training_data(config(data="a"), a["corpus"], a["queries"], a["records"])
    listed = load(config(data=["a"]), data, ["a"])
    direct = TrainingExamples.from_tables(
        *(pd.read_parquet(a[k]) for k in ("queries", "corpus", "records"))
    )
    for got in (one, listed):
        assert list(got.examples.query_ids) == list(direct.query_ids)
        assert list(got.examples.passage_ids) == list(direct.passage_ids)
        assert got.identity == {
            "train_queries": N_QUERIES,
            "passages": N_PASSAGES,
            "dev_queries": 0,
            "mined_by_fingerprint": None,
        }
    # the run's recorded configuration is the one run folders made before these keys hold
    assert "passage_pool" not in config(data="a").training_dict()
    assert config(data=["a", "b"]).training_dict()["data"] == ["a", "b"]
    assert config(data="a", passage_pool="referenced").training_dict()["passage_pool"] == (
        "referenced"
    )


# --------------------------------------------------------------------------- referenced pool


def test_read_passages_reads_only_the_row_groups_that_hold_wanted_ids(data):
    wanted = ["D3", "D1", "D25", "D27", "D59"]  # row groups 0, 2 and 5 of 6
    df, read = read_passages(data["a"]["corpus"], wanted)
    assert list(df["doc_id"]) == ["D1", "D3", "D25", "D27", "D59"]  # file order
    assert list(df["text"]) == ["a p1", "a p3", "a p25", "a p27", "a p59"]
    assert (read.row_groups, read.row_groups_read) == (6, 3)
    assert read.ids_scanned == N_PASSAGES  # only the doc_id column of the others
    assert (read.rows_read, read.rows_kept) == (30, 5)
    with pytest.raises(InputError, match=r"1 doc id\(s\) .* not in the corpus: first \['X'\]"):
        read_passages(data["a"]["corpus"], ["D1", "X"])


def test_referenced_pool_keeps_exactly_the_passages_the_training_data_names(data, caplog):
    cfg = config(data=["a", "b"], mined_by="p1", hard_ratio=0.1, passage_pool="referenced")
    with caplog.at_level("INFO"):
        ex = load(cfg, data, ["a", "b"], mined=True).examples
    named = {
        f"{n}/D{k}"
        for n in ("a", "b")
        for i in range(N_QUERIES)
        for k in (i, i + 20, i + 21, i + 40, i + 41, i + 42)  # positive, record, mined
    }
    assert set(ex.passage_ids) == named and ex.n_passages == len(named)
    assert "b/D59" not in set(ex.passage_ids)  # mined for a query not trained on
    assert "kept 39 referenced passage(s) of 60" in caplog.text


@pytest.mark.parametrize("names", [["a"], ["a", "b"]])
def test_referenced_pool_draws_the_corpus_batches_when_every_slot_is_hard(data, tokenizer, names):
    """hard_ratio 1 and >= n_negatives mined per query: no random negative is drawn, so
    the pool cannot matter; the batches (by passage id) are the same."""
    settings = {"data": names, "mined_by": "p1", "hard_ratio": 1.0, "n_negatives": 3}
    drawn = {}
    for pool in ("corpus", "referenced"):
        ex = load(config(passage_pool=pool, **settings), data, names, mined=True).examples
        draws = batches(ex, tokenizer, n_negatives=3, hard_ratio=1.0)
        drawn[pool] = [(list(e), list(ex.passage_ids[p]), h) for e, p, h in draws]
        assert ex.n_passages == {"corpus": 60, "referenced": 39}[pool] * len(names)
    assert drawn["corpus"] == drawn["referenced"]
    assert all(h == 4 * 3 for _, _, h in drawn["corpus"])


def test_referenced_pool_with_a_dev_hold_out_scores_dev_on_the_collection(data):
    a = data["a"]
    cfg = config(data="a", passage_pool="referenced", dev_holdout=0.25)
    loaded = load_training_data(cfg, a["corpus"], a["queries"], a["records"])
    assert loaded.identity["train_queries"] == 9 and loaded.identity["dev_queries"] == 3
    assert len(loaded.dev[0]) == N_PASSAGES
    train = [int(q[1:]) for q in loaded.examples.query_ids]
    named = {f"D{k}" for i in train for k in (i, i + 20, i + 21)}  # positive, negatives
    assert set(loaded.examples.passage_ids) == named


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_input_errors(data, tmp_path):
    a, b = data["a"], data["b"]
    two = config(data=["a", "b"])
    with pytest.raises(InputError, match=r"1 queries path\(s\) given for 2 data set\(s\)"):
        load_training_data(two, [a["corpus"], b["corpus"]], [a["queries"]], [a["records"]])
    with pytest.raises(InputError, match=r"1 corpus path\(s\) given for 2"):
        load_training_data(two, a["corpus"], a["queries"], a["records"])
    with pytest.raises(InputError, match=r"finetuning\.m\.data: data set 'a' is listed twice"):
        config(data=["a", "b", "a"])
    with pytest.raises(InputError, match=r"finetuning\.m\.data: a dev set .* single data set"):
        config(data=["a", "b"], dev_holdout=0.1)
    with pytest.raises(InputError, match=r"finetuning\.m\.data: a dev set .* single data set"):
        config(data=["a", "b"], dev_split="dev")
    for bad in ([], [""], ["a", 3]):
        with pytest.raises(InputError, match=r"finetuning\.m\.data"):
            config(data=bad)
    with pytest.raises(InputError, match=r"finetuning\.m\.data: expected"):
        config(data=3)
    with pytest.raises(InputError, match=r"finetuning\.m\.passage_pool: must be one of"):
        config(passage_pool="all")
    bare = _dataset(tmp_path / "bare", "c", negatives=False)
    with pytest.raises(InputError, match=r"passage_pool: 'referenced' .* 'c' names no negative"):
        load_training_data(
            config(data="c", passage_pool="referenced"),
            bare["corpus"],
            bare["queries"],
            bare["records"],
        )
    mined = config(data=["a", "b"], mined_by="p1", hard_ratio=0.1)
    with pytest.raises(InputError, match=r"1 mined negatives path\(s\) given for 2"):
        load_training_data(
            mined,
            [a["corpus"], b["corpus"]],
            [a["queries"], b["queries"]],
            [a["records"], b["records"]],
            mined=[a["mined"]],
            mined_by_model=data["model"],
        )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "b", "--dataset", "a"], r"data is \['a', 'b'\]: pass --dataset once"),
        (["--dataset", "a", "--dataset", "b", "--records", "r2"], r"1 --queries given for 2"),
    ],
)
def test_the_script_refuses_options_that_do_not_match_the_data_sets(tmp_path, extra, message):
    import re

    args = [
        "--name", "m", "--experiment", json.dumps({"data": ["a", "b"]}), "--init", "x",
        "--corpus", "c1", "--corpus", "c2", "--queries", "q1", "--records", "r1",
        "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    if "--records" not in extra:
        args += ["--queries", "q2", "--records", "r2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "finetune.py"), *args, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(message, done.stderr), done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_the_plan_checks_every_data_set():
    from contriever_repro.plan import finetune_config

    config = {
        "datasets": {"a": {}, "b": {}, "group": {"subsets": ["x"]}},
        "finetuning": {
            "ok": {"data": ["a", "b"], "init": "hf:x"},
            "unknown": {"data": ["a", "zz"], "init": "hf:x"},
            "group": {"data": ["a", "group"], "init": "hf:x"},
        },
    }
    assert finetune_config(config, "ok").datasets == ("a", "b")
    with pytest.raises(InputError, match=r"finetuning\.unknown\.data: 'zz' is not defined"):
        finetune_config(config, "unknown")
    with pytest.raises(InputError, match=r"finetuning\.group\.data: 'group' is a group"):
        finetune_config(config, "group")
