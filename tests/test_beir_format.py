"""BEIR folder parsing: every bad input names its file and line; real SciFact parses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from contriever_repro.data.beir import (
    CQADUPSTACK_FORUMS,
    convert_beir_folder,
    list_subforums,
    load_beir_folder,
    read_corpus,
    read_qrels,
    read_queries,
)
from contriever_repro.errors import InputError
from contriever_repro.io import read_table

CORPUS = [
    {"_id": "4983", "title": "Title A", "text": "alpha"},
    {"_id": "0042", "title": "", "text": "beta", "metadata": {"x": 1}},
    {"_id": "d3", "title": "Title C", "text": "gamma"},
]
QUERIES = [
    {"_id": "1", "text": "first query"},
    {"_id": "2", "text": "second query"},
    {"_id": "3", "text": "only in train"},
]
QRELS_TEST = "query-id\tcorpus-id\tscore\n1\t4983\t1\n1\t0042\t0\n2\td3\t2\n"
QRELS_TRAIN = "query-id\tcorpus-id\tscore\n3\t4983\t1\n"


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _folder(tmp_path: Path, corpus=None, queries=None, qrels=None) -> Path:
    folder = tmp_path / "ds"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus if corpus is not None else _jsonl(CORPUS))
    (folder / "queries.jsonl").write_text(queries if queries is not None else _jsonl(QUERIES))
    (folder / "qrels" / "test.tsv").write_text(qrels if qrels is not None else QRELS_TEST)
    (folder / "qrels" / "train.tsv").write_text(QRELS_TRAIN)
    return folder


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _raises_at(fn, path: Path, line: int | None, *fragments: str) -> InputError:
    with pytest.raises(InputError) as info:
        fn(path)
    message = str(info.value)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(where), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# ---- good input -------------------------------------------------------------------


def test_read_corpus_keeps_ids_as_strings_and_normalises_title(tmp_path):
    rows = [*CORPUS, {"_id": 7, "text": "no title"}, {"_id": "n", "title": None, "text": "t"}]
    path = _write(tmp_path, "corpus.jsonl", _jsonl(rows) + "\n\n")
    df = read_corpus(path)
    assert list(df.columns) == ["doc_id", "title", "text"]
    assert df["doc_id"].tolist() == ["4983", "0042", "d3", "7", "n"]
    assert all(isinstance(v, str) for v in df["doc_id"])
    assert df["title"].tolist() == ["Title A", "", "Title C", "", ""]


def test_read_queries_drops_metadata(tmp_path):
    path = _write(tmp_path, "queries.jsonl", _jsonl([{"_id": "0", "text": "q", "metadata": {}}]))
    df = read_queries(path)
    assert list(df.columns) == ["query_id", "text"]
    assert df.iloc[0].tolist() == ["0", "q"]


def test_read_qrels_types_and_blank_trailing_lines(tmp_path):
    path = _write(tmp_path, "test.tsv", QRELS_TEST + "\n\n")
    df = read_qrels(path)
    assert list(df.columns) == ["query_id", "doc_id", "relevance"]
    assert df["doc_id"].tolist() == ["4983", "0042", "d3"]
    assert str(df["relevance"].dtype) == "int32"
    assert df["relevance"].tolist() == [1, 0, 2]


def test_load_restricts_queries_to_split(tmp_path):
    folder = _folder(tmp_path)
    corpus, queries, qrels = load_beir_folder(folder, "test")
    assert len(corpus) == 3
    assert queries["query_id"].tolist() == ["1", "2"]
    assert len(qrels) == 3
    _, train_queries, train_qrels = load_beir_folder(folder, "train")
    assert train_queries["query_id"].tolist() == ["3"] and len(train_qrels) == 1


def test_convert_writes_three_typed_tables(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    counts = convert_beir_folder(
        folder, "test", out / "corpus.parquet", out / "queries.parquet", out / "qrels.parquet"
    )
    assert counts == {"docs": 3, "queries": 2, "qrels": 3}
    corpus = read_table(out / "corpus.parquet", "corpus")
    qrels = read_table(out / "qrels.parquet", "qrels")
    assert corpus["doc_id"].tolist() == ["4983", "0042", "d3"]
    assert qrels["doc_id"].tolist() == ["4983", "0042", "d3"]
    assert str(qrels["relevance"].dtype) == "int32"


def test_convert_writes_nothing_when_validation_fails(tmp_path):
    folder = _folder(tmp_path, qrels=QRELS_TEST + "2\tmissing-doc\t1\n")
    out = tmp_path / "out"
    with pytest.raises(InputError):
        convert_beir_folder(
            folder, "test", out / "corpus.parquet", out / "queries.parquet", out / "qrels.parquet"
        )
    assert not out.exists() or list(out.iterdir()) == []


# ---- bad jsonl ----------------------------------------------------------------------


def test_malformed_json_line(tmp_path):
    path = _write(tmp_path, "corpus.jsonl", _jsonl(CORPUS[:2]) + '{"_id": "x", "text": \n')
    _raises_at(read_corpus, path, 3, "malformed JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    path = _write(tmp_path, "corpus.jsonl", '["_id", "x"]\n')
    _raises_at(read_corpus, path, 1, "expected a JSON object")


def test_corpus_row_without_id(tmp_path):
    path = _write(tmp_path, "corpus.jsonl", _jsonl([CORPUS[0], {"title": "", "text": "t"}]))
    _raises_at(read_corpus, path, 2, "no '_id'")


@pytest.mark.parametrize("bad_id", [[1, 2], {"a": 1}, None, 1.5, True, ""])
def test_corpus_row_with_unusable_id(tmp_path, bad_id):
    path = _write(tmp_path, "corpus.jsonl", _jsonl([CORPUS[0], {"_id": bad_id, "text": "t"}]))
    _raises_at(read_corpus, path, 2, "'_id'")


def test_corpus_row_without_text(tmp_path):
    path = _write(tmp_path, "corpus.jsonl", _jsonl([*CORPUS, {"_id": "z", "title": "t"}]))
    _raises_at(read_corpus, path, 4, "no 'text'")


def test_query_without_text(tmp_path):
    path = _write(tmp_path, "queries.jsonl", _jsonl([{"_id": "1"}]))
    _raises_at(read_queries, path, 1, "no 'text'")


def test_duplicate_doc_ids_name_both_lines(tmp_path):
    rows = [*CORPUS, {"_id": "x", "text": "t"}, {"_id": "0042", "text": "again"}]
    path = _write(tmp_path, "corpus.jsonl", _jsonl(rows))
    _raises_at(read_corpus, path, 5, "duplicate doc id '0042'", "first on line 2")


def test_duplicate_query_ids_name_both_lines(tmp_path):
    rows = [*QUERIES, {"_id": "1", "text": "again"}]
    path = _write(tmp_path, "queries.jsonl", _jsonl(rows))
    _raises_at(read_queries, path, 4, "duplicate query id '1'", "first on line 1")


def test_blank_line_keeps_line_numbers_right(tmp_path):
    path = _write(tmp_path, "corpus.jsonl", _jsonl(CORPUS[:1]) + "\n" + '{"_id": "z"}\n')
    _raises_at(read_corpus, path, 3, "no 'text'")


def test_empty_corpus(tmp_path):
    path = _write(tmp_path, "corpus.jsonl", "\n")
    _raises_at(read_corpus, path, None, "no documents", "empty")


def test_no_queries(tmp_path):
    path = _write(tmp_path, "queries.jsonl", "")
    _raises_at(read_queries, path, None, "no queries")


def test_missing_file(tmp_path):
    _raises_at(read_corpus, tmp_path / "corpus.jsonl", None, "does not exist")


def test_invalid_utf8(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(_jsonl(CORPUS[:1]).encode() + b'{"_id": "\xff", "text": "t"}\n')
    _raises_at(read_corpus, path, 2, "UTF-8")


# ---- bad qrels ---------------------------------------------------------------------


def test_qrels_wrong_column_count(tmp_path):
    path = _write(tmp_path, "test.tsv", QRELS_TEST + "1\t4983\n")
    _raises_at(read_qrels, path, 5, "3 tab-separated columns", "got 2")


def test_qrels_trec_style_four_columns(tmp_path):
    path = _write(tmp_path, "test.tsv", "query-id\tcorpus-id\tscore\n1\t0\t4983\t1\n")
    _raises_at(read_qrels, path, 2, "got 4")


@pytest.mark.parametrize("score", ["1.0", "high", ""])
def test_qrels_non_integer_score(tmp_path, score):
    path = _write(tmp_path, "test.tsv", f"query-id\tcorpus-id\tscore\n1\t4983\t1\n2\td3\t{score}\n")
    _raises_at(read_qrels, path, 3, "score must be an integer")


def test_qrels_missing_header(tmp_path):
    path = _write(tmp_path, "test.tsv", "1\t4983\t1\n2\td3\t1\n")
    _raises_at(read_qrels, path, 1, "missing header")


def test_qrels_empty_file(tmp_path):
    path = _write(tmp_path, "test.tsv", "")
    _raises_at(read_qrels, path, None, "missing header")


def test_qrels_header_only(tmp_path):
    path = _write(tmp_path, "test.tsv", "query-id\tcorpus-id\tscore\n")
    _raises_at(read_qrels, path, None, "no qrels rows")


def test_qrels_repeated_pair_keeps_last_score(tmp_path, caplog):
    path = _write(tmp_path, "test.tsv", QRELS_TEST + "1\t4983\t2\n")
    with caplog.at_level(logging.WARNING, logger="contriever_repro"):
        df = read_qrels(path)
    assert len(df) == 3
    assert df.set_index("doc_id").loc["4983", "relevance"] == 2
    assert "repeated" in caplog.text


# ---- cross-file checks --------------------------------------------------------------


def test_unknown_query_id_strict(tmp_path):
    folder = _folder(tmp_path, qrels=QRELS_TEST + "9\td3\t1\n8\td3\t1\n")
    qrels_path = folder / "qrels" / "test.tsv"
    with pytest.raises(InputError) as info:
        load_beir_folder(folder, "test")
    message = str(info.value)
    assert message.startswith(f"{qrels_path}:5: "), message
    assert "query-id '9' is not in queries.jsonl" in message and "2 qrels row(s)" in message


def test_unknown_doc_id_strict(tmp_path):
    folder = _folder(tmp_path, qrels=QRELS_TEST + "2\tghost\t1\n")
    with pytest.raises(InputError) as info:
        load_beir_folder(folder, "test")
    message = str(info.value)
    assert message.startswith(f"{folder / 'qrels' / 'test.tsv'}:5: "), message
    assert "corpus-id 'ghost' is not in corpus.jsonl" in message and "1 qrels row(s)" in message


def test_unknown_ids_lenient_drops_and_warns(tmp_path, caplog):
    folder = _folder(tmp_path, qrels=QRELS_TEST + "9\td3\t1\n2\tghost\t1\n")
    with caplog.at_level(logging.WARNING, logger="contriever_repro"):
        _, queries, qrels = load_beir_folder(folder, "test", strict=False)
    assert len(qrels) == 3
    assert queries["query_id"].tolist() == ["1", "2"]
    assert "1 qrels row(s) with unknown query ids and 1 with unknown corpus ids" in caplog.text


def test_missing_split_lists_existing_ones(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(InputError) as info:
        load_beir_folder(folder, "dev")
    message = str(info.value)
    assert str(folder / "qrels" / "dev.tsv") in message and "['test', 'train']" in message


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_beir_folder(tmp_path / "nope", "test")


# ---- CQADupStack --------------------------------------------------------------------


def _cqa(tmp_path: Path, forums) -> Path:
    root = tmp_path / "cqadupstack"
    for forum in forums:
        (root / forum / "qrels").mkdir(parents=True)
        (root / forum / "corpus.jsonl").write_text(_jsonl(CORPUS))
        (root / forum / "queries.jsonl").write_text(_jsonl(QUERIES))
        (root / forum / "qrels" / "test.tsv").write_text(QRELS_TEST)
    return root


def test_list_subforums_all_twelve(tmp_path):
    root = _cqa(tmp_path, CQADUPSTACK_FORUMS)
    (root / "__MACOSX").mkdir()
    assert list_subforums(root) == sorted(CQADUPSTACK_FORUMS)
    assert len(list_subforums(root)) == 12
    corpus, _, _ = load_beir_folder(root / "android", "test")
    assert len(corpus) == 3


def test_list_subforums_missing_forum(tmp_path):
    root = _cqa(tmp_path, [f for f in CQADUPSTACK_FORUMS if f != "tex"])
    with pytest.raises(InputError, match=r"missing sub-forum folder\(s\) \['tex'\]"):
        list_subforums(root)


def test_list_subforums_incomplete_forum(tmp_path):
    root = _cqa(tmp_path, CQADUPSTACK_FORUMS)
    (root / "gis" / "queries.jsonl").unlink()
    with pytest.raises(InputError, match="lacks") as info:
        list_subforums(root)
    assert str(root / "gis") in str(info.value)


def test_list_subforums_without_expected_list(tmp_path):
    root = _cqa(tmp_path, ["a", "b"])
    (root / "empty").mkdir()
    assert list_subforums(root, expected=None) == ["a", "b"]


# ---- real data ----------------------------------------------------------------------


@pytest.mark.integration
def test_real_scifact(shared_data):
    folder = shared_data / "beir" / "scifact"
    if not folder.is_dir():
        pytest.skip("scifact is not in ../shared/data")
    corpus, queries, qrels = load_beir_folder(folder, "test")
    assert (len(corpus), len(queries), len(qrels)) == (5183, 300, 339)
    assert corpus["doc_id"].iloc[0] == "4983"
    assert all(isinstance(v, str) for v in qrels["doc_id"].head(50))
    _, train_queries, train_qrels = load_beir_folder(folder, "train")
    assert (len(train_queries), len(train_qrels)) == (809, 919)
