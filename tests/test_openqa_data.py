"""Open-domain QA questions and DPR passages: real NQ/TriviaQA files, formats, errors."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from contriever_repro.data.openqa import (
    articles_from_lines,
    convert_passages,
    cut_into_passages,
    question_format,
    read_questions,
    write_dpr_tsv,
)
from contriever_repro.errors import InputError
from contriever_repro.io import CORPUS_SCHEMA


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "count"), [("nq-test.qa.tsv", 3610), ("trivia-test.qa.tsv", 11313)]
)
def test_real_dpr_question_files(shared_data, name, count):
    questions = read_questions(shared_data / "openqa" / name)
    assert len(questions) == count
    assert list(questions.columns) == ["query_id", "text", "answers"]
    assert questions["query_id"].tolist() == [str(i) for i in range(count)]
    assert all(isinstance(a, list) and a for a in questions["answers"])
    assert all(isinstance(x, str) for a in questions["answers"] for x in a)
    if name.startswith("nq"):
        first = questions.iloc[0]
        assert first["text"] == "who got the first nobel prize in physics"
        assert first["answers"] == ["Wilhelm Conrad Röntgen"]
        # csv quoting undone: an answer holding both quote kinds.
        row = questions[questions["text"] == "who sings the theme song for the proud family"]
        assert row["answers"].iloc[0] == ["Solange Knowles", "Destiny 's Child"]
    else:
        # A question DPR's csv reader leaves with an extra layer of quotes keeps it.
        assert (questions["text"].str.startswith('"How many different animal shapes')).any()


RECORDS = [
    {"question": "who wrote hamlet", "answers": ["Shakespeare", "William Shakespeare"]},
    {"question": "capital of france", "answers": ["Paris"], "ctxs": [{"id": "1"}]},
]


def test_fid_json_and_jsonl(tmp_path):
    json_path = tmp_path / "test.json"
    json_path.write_text(json.dumps(RECORDS), encoding="utf-8")
    got = read_questions(json_path)
    assert got["query_id"].tolist() == ["0", "1"]
    assert got["text"].tolist() == ["who wrote hamlet", "capital of france"]
    assert got["answers"].tolist() == [["Shakespeare", "William Shakespeare"], ["Paris"]]

    jsonl_gz = tmp_path / "en.jsonl.gz"
    with gzip.open(jsonl_gz, "wt", encoding="utf-8") as f:
        for i, r in enumerate(RECORDS):
            f.write(json.dumps({"id": 7000 + i, "lang": "en", **r}) + "\n\n")
    got = read_questions(jsonl_gz)
    assert got["query_id"].tolist() == ["7000", "7001"]
    assert got["answers"].tolist()[1] == ["Paris"]


def test_google_nq_open_jsonl_says_answer(tmp_path):
    """NQ-open.dev.jsonl, the source of NQ test's original answers, names them `answer`."""
    path = tmp_path / "NQ-open.dev.jsonl"
    lines = [
        {"question": "when was the last time anyone was on the moon",
         "answer": ["14 December 1972 UTC", "December 1972"]},
        {"question": "who wrote he ain't heavy he's my brother lyrics",
         "answer": ["Bobby Scott", "Bob Russell"]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    got = read_questions(path)
    assert got["answers"].tolist() == [lines[0]["answer"], lines[1]["answer"]]
    assert got["query_id"].tolist() == ["0", "1"]


def test_format_from_name(tmp_path):
    assert question_format("a/nq-test.qa.tsv") == "qa-tsv"
    assert question_format("qa.csv") == "qa-tsv"
    assert question_format("x.json.gz") == "json"
    assert question_format("x.jsonl") == "jsonl"
    with pytest.raises(InputError, match="x.txt"):
        question_format("x.txt")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("q.jsonl", '{"answers": ["a"]}\n', r"q\.jsonl:1: .*question"),
        ("q.jsonl", '{"question": "x", "answers": ["a"]}\n{"question": "  ", "answers": ["a"]}\n',
         r"q\.jsonl:2: .*empty"),
        ("q.jsonl", '{"question": "x", "answers": "a"}\n', r"q\.jsonl:1: .*list of strings"),
        ("q.jsonl", '{"question": "x", "answers": ["a", 3]}\n', r"q\.jsonl:1: .*list of strings"),
        ("q.jsonl", '{"question": "x", "answers": []}\n', r"q\.jsonl:1: .*empty"),
        ("q.jsonl", '{"question": "x", "answers": ["a"]}\n{"question": \n', r"q\.jsonl:2: .*JSON"),
        ("q.jsonl", '{"id": "a", "question": "x", "answers": ["a"]}\n'
         '{"id": "a", "question": "y", "answers": ["b"]}\n', r"q\.jsonl:2: .*duplicate.*line 1"),
        ("q.json", '[{"question": "x", "answers": ["a"]}, {"question": "y", "answers": [1]}]',
         r"q\.json: item 1: .*list of strings"),
        ("q.json", '[{"id": 1, "question": "x", "answers": ["a"]}, '
         '{"question": "y", "answers": ["b"]}]', r"q\.json: item 1: duplicate .*item 0"),
        ("q.json", '{"question": "x"}', r"q\.json: .*JSON list"),
        ("q.tsv", "who\t['a']\nwhat\t['b'\n", r"q\.tsv:2: .*list literal"),
        ("q.tsv", "who\t['a']\nwhat\n", r"q\.tsv:2: .*2 tab-separated"),
        ("q.tsv", "who\t'a'\n", r"q\.tsv:1: .*list of strings"),
        ("q.tsv", "", r"q\.tsv: no questions"),
    ],
)  # fmt: skip
def test_bad_question_files(tmp_path, name, text, match):
    with pytest.raises(InputError, match=match):
        read_questions(write(tmp_path, name, text))


CORPUS = pd.DataFrame(
    {
        "doc_id": ["1", "2", "3", "4"],
        "title": ["Aaron", 'Say "Hi"', "", "Tab\tTitle"],
        "text": [
            'Aaron ( or ; ""Ahärôn"") is a prophet',
            'text with\ttab and a quote " inside',
            "no title here",
            "two\nlines and \r carriage",
        ],
    }
)


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_passages_round_trip(tmp_path, suffix, caplog):
    tsv = tmp_path / f"psgs_w100{suffix}"
    write_dpr_tsv(CORPUS, tsv)
    out = tmp_path / "corpus.parquet"
    with caplog.at_level(logging.INFO, logger="contriever_repro"):
        assert convert_passages(tsv, out, batch_rows=3) == 4
    assert any("converting psgs_w100" in r.getMessage() for r in caplog.records)
    table = pq.read_table(out)
    assert table.schema.equals(CORPUS_SCHEMA)
    assert pq.ParquetFile(out).num_row_groups == 2
    pd.testing.assert_frame_equal(table.to_pandas(), CORPUS[["doc_id", "title", "text"]])


def test_passages_in_dprs_own_quoting(tmp_path):
    """DPR's file quotes the text and doubles the quotes inside."""
    tsv = write(
        tmp_path,
        "psgs.tsv",
        'id\ttext\ttitle\n1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n2\t"plain"\t\n',
    )
    out = tmp_path / "c.parquet"
    assert convert_passages(tsv, out) == 2
    got = pd.read_parquet(out)
    assert got["text"].tolist() == ['Aaron Aaron ( or ; "Ahärôn") is a prophet', "plain"]
    assert got["title"].tolist() == ["Aaron", ""]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("id\ttitle\ttext\n1\ta\tb\n", r"psgs\.tsv:1: .*header"),
        ("", r"psgs\.tsv:1: .*header"),
        ("id\ttext\ttitle\n1\ta\tT\n2\tb\n", r"psgs\.tsv:3: .*3 tab-separated.*got 2"),
        ("id\ttext\ttitle\n1\ta\tT\n2\tb\tT\textra\n", r"psgs\.tsv:3: .*got 4"),
        ("id\ttext\ttitle\n1\ta\tT\n\tb\tT\n", r"psgs\.tsv:3: .*empty"),
        ("id\ttext\ttitle\n1\ta\tT\n1\tb\tT\n", r"psgs\.tsv:3: duplicate passage id '1'"),
        ("id\ttext\ttitle\nx\ta\tT\nx\tb\tT\n", r"psgs\.tsv:3: duplicate passage id 'x'"),
        ("id\ttext\ttitle\n", r"psgs\.tsv: no passages"),
    ],
)
def test_bad_passage_files_leave_no_output(tmp_path, text, match):
    out = tmp_path / "c.parquet"
    with pytest.raises(InputError, match=match):
        convert_passages(write(tmp_path, "psgs.tsv", text), out)
    assert list(tmp_path.iterdir()) == [tmp_path / "psgs.tsv"]


def test_duplicate_check_tells_integer_spellings_apart(tmp_path):
    rows = "".join(f"{i}\tt\tT\n" for i in ("7", "07", "0", "00", "-7", "3000000000", "x7"))
    tsv = write(tmp_path, "psgs.tsv", "id\ttext\ttitle\n" + rows)
    assert convert_passages(tsv, tmp_path / "c.parquet") == 7
    tsv = write(tmp_path, "psgs.tsv", "id\ttext\ttitle\n3000000000\tt\tT\n3000000000\tt\tT\n")
    with pytest.raises(InputError, match="duplicate"):
        convert_passages(tsv, tmp_path / "c.parquet")


def test_cut_into_passages_block_sizes():
    words = [f"w{i}" for i in range(250)]
    corpus = cut_into_passages(
        [("A", " ".join(words)), ("Empty", "  "), ("B", "one  two\nthree")], words=100, first_id=5
    )
    assert list(corpus.columns) == ["doc_id", "title", "text"]
    assert corpus["doc_id"].tolist() == ["5", "6", "7", "8"]
    assert corpus["title"].tolist() == ["A", "A", "A", "B"]
    assert [len(t.split()) for t in corpus["text"]] == [100, 100, 50, 3]
    assert corpus["text"].iloc[1].split()[0] == "w100"
    assert corpus["text"].iloc[3] == "one two three"


def test_articles_from_lines(tmp_path):
    path = write(
        tmp_path,
        "en.txt",
        "The 14th Dalai Lama is the current Dalai Lama.\n\n"
        "Myrtaceae, the myrtle family, is a family of plants.\n"
        "Andrianampoinimerina ruled the Kingdom of Imerina from 1787.\n",
    )
    got = list(articles_from_lines(path))
    assert got == [
        ("The 14th Dalai Lama", "The 14th Dalai Lama is the current Dalai Lama."),
        ("Myrtaceae, the myrtle family", "Myrtaceae, the myrtle family, is a family of plants."),
        ("Andrianampoinimerina ruled the Kingdom", got[2][1]),
    ]
    assert len(list(articles_from_lines(path, limit=2))) == 2


@pytest.mark.integration
def test_real_wikipedia_lines_to_passages(shared_data):
    articles = list(articles_from_lines(shared_data / "text/wikipedia-summaries/en.txt", 200))
    corpus = cut_into_passages(articles)
    assert len(articles) == 200
    assert all(0 < len(t.split()) <= 100 for t in corpus["text"])
    assert corpus["doc_id"].is_unique and corpus["title"].str.len().gt(0).all()
