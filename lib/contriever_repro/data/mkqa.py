"""MKQA for cross-lingual retrieval: the authors' question filter (spec §13).

MKQA (apple/ml-mkqa, `mkqa.jsonl.gz`) has 10,000 questions, each asked in 26 languages
and answered in English. The authors keep a question when its English answers are
retrievable strings and evaluate each language's question against English Wikipedia
with the English answers:

* loop over `answers['en']`; an answer of type unanswerable, binary or long_answer is
  skipped, any other adds its aliases, then its text, to the question's answer list;
* the keep flag is reset for every answer, so the last English answer decides whether
  the question is kept (with answers gathered from all its non-skipped answers).

Two deliberate differences, neither of which the released MKQA file should trigger:
an example with no English answer is dropped (the authors' flag would leak in from
the previous example, or be undefined on the first), and an answer text that is null
is left out (it would crash their answer matching); a kept example left with no answer
string at all is an error. The paper reports 6,619 kept
questions per language; `check_count` makes a different count an error.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..errors import InputError

MKQA_LANGUAGES: tuple[str, ...] = (
    "en",
    "ar",
    "fi",
    "ja",
    "ko",
    "ru",
    "es",
    "sv",
    "he",
    "th",
    "da",
    "de",
    "fr",
    "it",
    "nl",
    "pl",
    "pt",
    "hu",
    "vi",
    "ms",
    "km",
    "no",
    "tr",
    "zh_cn",
    "zh_hk",
    "zh_tw",
)
SKIPPED_ANSWER_TYPES = frozenset({"unanswerable", "binary", "long_answer"})
PAPER_KEPT_PER_LANGUAGE = 6619


def read_mkqa(path: str | Path) -> list[dict]:
    """MKQA records from a .jsonl or .jsonl.gz file, each checked for its fields."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                lineno += 1
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as err:
                    raise InputError(f"malformed JSON: {err}", path, lineno) from err
                _check_record(record, path, lineno)
                records.append(record)
    except UnicodeDecodeError as err:
        raise InputError(f"not valid UTF-8: {err}", path, lineno + 1) from err
    except (EOFError, gzip.BadGzipFile) as err:
        raise InputError(f"broken gzip stream: {err}", path, lineno + 1) from err
    if not records:
        raise InputError("no MKQA records in the file", path)
    return records


def _check_record(record: object, path: Path, lineno: int) -> None:
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}", path, lineno)
    for key, kind in (("example_id", (int, str)), ("queries", dict), ("answers", dict)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise InputError(
                f"record has no valid {key!r} (got {record.get(key)!r:.100})", path, lineno
            )
    english = record["answers"].get("en")
    if not isinstance(english, list) or not all(
        isinstance(a, dict) and isinstance(a.get("type"), str) for a in english
    ):
        raise InputError("answers['en'] must be a list of objects with a 'type'", path, lineno)


def _english_answers(record: Mapping) -> list[str] | None:
    """The authors' answer list for one example, or None when it is not kept."""
    answers: list[str] = []
    keep = False
    for answer in record["answers"]["en"]:
        keep = False
        if answer["type"] in SKIPPED_ANSWER_TYPES:
            continue
        keep = True
        answers.extend(a for a in answer.get("aliases") or [] if a is not None)
        if answer.get("text") is not None:
            answers.append(answer["text"])
    return answers if keep else None


def _check_languages(languages: Sequence[str], where: str) -> list[str]:
    langs = list(languages)
    unknown = [lang for lang in langs if lang not in MKQA_LANGUAGES]
    if unknown:
        raise InputError(
            f"unknown MKQA language(s) {unknown}; MKQA has {', '.join(MKQA_LANGUAGES)}",
            where or None,
        )
    if len(set(langs)) != len(langs):
        raise InputError(f"a language is listed twice in {langs}", where or None)
    return langs


def mkqa_questions(
    records: Iterable[Mapping], languages: Sequence[str], where: str = ""
) -> dict[str, pd.DataFrame]:
    """Per language, the kept questions: query_id (example_id), text, answers (English).

    The same examples, in file order, for every language.
    """
    langs = _check_languages(languages, where)
    ids: list[str] = []
    texts: dict[str, list[str]] = {lang: [] for lang in langs}
    answer_lists: list[list[str]] = []
    seen: set[str] = set()
    for record in records:
        qid = str(record["example_id"])
        if qid in seen:
            raise InputError(f"example_id {qid} occurs twice", where or None)
        seen.add(qid)
        answers = _english_answers(record)
        if answers is None:
            continue
        if not answers:
            raise InputError(
                f"example {qid} is kept by its last English answer but has no answer text "
                f"or alias: {record['answers']['en']!r:.300}",
                where or None,
            )
        for lang in langs:
            text = record["queries"].get(lang)
            if not isinstance(text, str) or not text.strip():
                raise InputError(
                    f"example {qid} has no {lang!r} query (has {sorted(record['queries'])})",
                    where or None,
                )
            texts[lang].append(text)
        ids.append(qid)
        answer_lists.append(answers)
    return {
        lang: pd.DataFrame(
            {"query_id": list(ids), "text": texts[lang], "answers": [list(a) for a in answer_lists]}
        )
        for lang in langs
    }


def check_count(counts: Mapping[str, int], expected: int, where: str = "") -> None:
    """Every language must keep `expected` questions (the paper: 6,619)."""
    wrong = {lang: n for lang, n in counts.items() if n != expected}
    if wrong:
        detail = ", ".join(f"{lang}: {n} ({n - expected:+d})" for lang, n in wrong.items())
        raise InputError(
            f"MKQA kept-question counts differ from the expected {expected} per language: {detail}",
            where or None,
        )
