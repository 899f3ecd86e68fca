"""MKQA: the authors' question filter on real examples and hand-made edge cases."""

from __future__ import annotations

import gzip
import json

import pytest

from contriever_repro.data.mkqa import (
    MKQA_LANGUAGES,
    check_count,
    mkqa_questions,
    read_mkqa,
)
from contriever_repro.errors import InputError

DATE_ALIASES = [
    "2017-05-18",
    "18/05/2017",
    "2017 May, 18",
    "05-18-2017",
    "05/18/2017",
    "2017 May 18",
    "2017 05 18",
    "18 May 2017",
    "18 05 2017",
    "05 18 2017",
    "18-05-2017",
]


@pytest.fixture(scope="module")
def sample(shared_data):
    return read_mkqa(shared_data / "mkqa" / "mkqa-sample.jsonl.gz")


@pytest.mark.integration
def test_real_examples_kept_and_their_answers(sample):
    assert len(MKQA_LANGUAGES) == 26
    assert [r["answers"]["en"][-1]["type"] for r in sample] == [
        "date",
        "long_answer",
        "unanswerable",
        "unanswerable",
        "entity",
        "entity",
    ]
    got = mkqa_questions(sample, MKQA_LANGUAGES, where="mkqa-sample.jsonl.gz")
    assert set(got) == set(MKQA_LANGUAGES)
    for lang, df in got.items():
        assert df["query_id"].tolist() == [
            "36228854473990432",
            "-7449157003522518870",
            "7631360939705650347",
        ], lang
        assert df["text"].tolist() == [sample[i]["queries"][lang] for i in (0, 4, 5)], lang
    en = got["en"]
    # Two date answers: aliases then text of each, duplicates kept as the authors keep them.
    assert en["answers"].iloc[0] == ["2017", "2017", *DATE_ALIASES, "2017-05-18"]
    assert en["answers"].iloc[1] == [
        "Hafthór Júlíus Björnsson",
        "Hafthor Julius Bjornsson",
        "Hafthor Julíus Bjornsson",
        'Hafthor Julius "The Mountain" Bjornsson',
        "Hafþór Júlíus Björnsson",
    ]
    assert en["answers"].iloc[2] == ["Sir Ridley Scott", "Ridley Scott"]
    # Every language is asked with the English answers.
    assert got["ja"]["answers"].tolist() == en["answers"].tolist()
    assert en["text"].iloc[2] == (
        "who is the director of the film gladiator which was released in 2000"
    )
    check_count({lang: len(df) for lang, df in got.items()}, 3)


def record(example_id, answers, queries=None):
    queries = queries or {lang: f"q{example_id}-{lang}" for lang in MKQA_LANGUAGES}
    return {"example_id": example_id, "query": "q", "queries": queries, "answers": {"en": answers}}


ENTITY = {"type": "entity", "text": "Ridley Scott", "aliases": ["Sir Ridley Scott"]}
NUMBER = {"type": "number", "text": "42"}  # no aliases field
BINARY = {"type": "binary", "text": "yes"}


def test_last_english_answer_decides():
    records = [
        record(1, [ENTITY, BINARY]),  # last is skipped: dropped despite the entity
        record(2, [BINARY, ENTITY]),  # last is kept
        record(3, [ENTITY, NUMBER]),  # answers of both
        record(4, [{"type": "entity", "text": None, "aliases": ["Alias"]}]),  # null text
    ]
    got = mkqa_questions(records, ["en", "zh_cn"])["zh_cn"]
    assert got["query_id"].tolist() == ["2", "3", "4"]
    assert got["text"].tolist() == ["q2-zh_cn", "q3-zh_cn", "q4-zh_cn"]
    assert got["answers"].tolist() == [
        ["Sir Ridley Scott", "Ridley Scott"],
        ["Sir Ridley Scott", "Ridley Scott", "42"],
        ["Alias"],
    ]


def test_empty_english_answers_are_dropped_not_leaked():
    # The authors' flag would leak from example 1 and keep example 2.
    got = mkqa_questions([record(1, [ENTITY]), record(2, [])], ["en"])["en"]
    assert got["query_id"].tolist() == ["1"]


def test_kept_example_without_any_answer_string():
    with pytest.raises(InputError, match=r"mk\.jsonl: example 9 .*no answer"):
        mkqa_questions([record(9, [{"type": "entity", "text": None}])], ["en"], "mk.jsonl")


def test_unknown_or_missing_language():
    with pytest.raises(InputError, match=r"'zh'.*zh_cn, zh_hk, zh_tw"):
        mkqa_questions([record(1, [ENTITY])], ["en", "zh"], where="mkqa.jsonl.gz")
    short = record(1, [ENTITY], queries={"en": "who"})
    with pytest.raises(InputError, match=r"example 1 has no 'de' query"):
        mkqa_questions([short], ["en", "de"])


def test_count_mismatch_names_languages_and_difference():
    check_count({"en": 6619, "de": 6619}, 6619)
    with pytest.raises(InputError) as err:
        check_count({"en": 6619, "de": 6617, "fr": 6620}, 6619, where="mkqa.jsonl.gz")
    msg = str(err.value)
    assert "mkqa.jsonl.gz" in msg and "de: 6617 (-2)" in msg and "fr: 6620 (+1)" in msg
    assert "en:" not in msg


def test_read_mkqa_errors(tmp_path):
    path = tmp_path / "mkqa.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(record(1, [ENTITY])) + "\n{broken\n")
    with pytest.raises(InputError, match=r"mkqa\.jsonl\.gz:2: malformed JSON"):
        read_mkqa(path)
    plain = tmp_path / "mkqa.jsonl"
    plain.write_text(json.dumps({"example_id": 1, "queries": {}}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"mkqa\.jsonl:1: .*'answers'"):
        read_mkqa(plain)
    plain.write_text(json.dumps(record(1, [{"text": "x"}])) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"mkqa\.jsonl:1: .*'type'"):
        read_mkqa(plain)


def test_duplicate_example_ids():
    with pytest.raises(InputError, match="example_id 1 occurs twice"):
        mkqa_questions([record(1, [ENTITY]), record(1, [ENTITY])], ["en"])
