"""Open-domain QA inputs: question files and DPR's 100-word Wikipedia passages.

Questions (`read_questions`) come in the three forms the authors' and DPR's scripts
read, all turned into one table (query_id, text, answers: list of str):

* `json`: FiD's `test.json`, a JSON list of objects with "question" and "answers"
  (other keys, e.g. "ctxs", are ignored);
* `jsonl`: one such object per line (the authors' MKQA files, with "id");
* `qa-tsv`: DPR's `qa.csv` (despite its name tab-separated, read with Python's csv
  module as DPR does): `question<TAB>['answer', ...]`, the list a Python literal.
  csv quoting is undone as DPR's reader undoes it, so the handful of TriviaQA
  questions that carry an extra layer of quotes keep it, as in DPR.

A question's id is its "id" when the record has one, else its 0-based position.
Every question needs a non-blank text and a non-empty list of answer strings.

Passages (`convert_passages`) stream DPR's `psgs_w100.tsv` (21M rows, 13 GB) into a
corpus parquet. An empty title is kept: `text.passage_text` then encodes the text
alone, as the authors' script does for a passage without title.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..io import CORPUS_SCHEMA, atomic_path
from ..progress import Progress

log = logging.getLogger(__name__)

QUESTION_FORMATS = ("json", "jsonl", "qa-tsv")
PASSAGES_HEADER = ["id", "text", "title"]
_SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".tsv": "qa-tsv", ".csv": "qa-tsv"}
# Check the progress clock every this many rows.
_PROGRESS_EVERY = 100_000


def _open_text(path: Path, mode: str = "r", gz: bool | None = None) -> IO[str]:
    """UTF-8 text, gzip when the name ends in .gz (or `gz`); newline="" as csv needs."""
    if path.suffix == ".gz" if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def question_format(path: str | Path) -> str:
    """The question format a file name implies (.json, .jsonl, .tsv/.csv, each maybe .gz)."""
    path = Path(path)
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    if suffix not in _SUFFIX_FORMATS:
        raise InputError(
            f"cannot tell the question format from the name; use one of "
            f"{sorted(_SUFFIX_FORMATS)} (optionally .gz) or pass fmt={QUESTION_FORMATS}",
            path,
        )
    return _SUFFIX_FORMATS[suffix]


def _check_question(
    question: object, answers: object, path: Path, line: int | None, item: str
) -> tuple[str, list[str]]:
    if not isinstance(question, str):
        raise InputError(f"{item}has no 'question' string (got {question!r})", path, line)
    if not question.strip():
        raise InputError(f"{item}the question is empty", path, line)
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputError(
            f"{item}'answers' must be a list of strings, got {answers!r:.200}", path, line
        )
    if not answers:
        raise InputError(f"{item}'answers' is empty: the question cannot be evaluated", path, line)
    return question, answers


def _answers_of(record: dict) -> object:
    """FiD's and DPR's files say `answers`; Google's NQ-open release (the source of the
    original, unprocessed NQ answers) says `answer`."""
    return record["answers"] if "answers" in record else record.get("answer")


def _record_id(record: dict, position: int, path: Path, line: int | None, item: str) -> str:
    if "id" not in record:
        return str(position)
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"{item}'id' must be a string or integer, got {value!r}", path, line)
    if value == "":
        raise InputError(f"{item}'id' is empty", path, line)
    return str(value)


def _json_questions(path: Path) -> Iterator[tuple[str, str, list[str], int | None, str]]:
    try:
        with _open_text(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"not valid JSON: {err}", path) from err
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of questions, got {type(data).__name__}", path)
    for i, record in enumerate(data):
        item = f"item {i}: "
        if not isinstance(record, dict):
            raise InputError(f"{item}expected an object, got {type(record).__name__}", path)
        q, a = _check_question(record.get("question"), _answers_of(record), path, None, item)
        yield _record_id(record, i, path, None, item), q, a, None, item


def _jsonl_questions(path: Path) -> Iterator[tuple[str, str, list[str], int | None, str]]:
    position = 0
    with _open_text(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as err:
                    raise InputError(f"malformed JSON: {err}", path, lineno) from err
                if not isinstance(record, dict):
                    raise InputError(
                        f"expected a JSON object, got {type(record).__name__}", path, lineno
                    )
                q, a = _check_question(
                    record.get("question"), _answers_of(record), path, lineno, ""
                )
                yield _record_id(record, position, path, lineno, ""), q, a, lineno, ""
                position += 1
        except UnicodeDecodeError as err:
            raise InputError(f"not valid UTF-8: {err}", path, lineno + 1) from err


def _tsv_questions(path: Path) -> Iterator[tuple[str, str, list[str], int | None, str]]:
    position = 0
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != 2:
                    raise InputError(
                        f"expected 2 tab-separated fields (question, answer list), got {len(row)}",
                        path,
                        line,
                    )
                try:
                    answers = ast.literal_eval(row[1])
                except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
                    raise InputError(
                        f"answers {row[1]!r:.200} are not a Python list literal: {err}", path, line
                    ) from err
                q, a = _check_question(row[0], answers, path, line, "")
                yield str(position), q, a, line, ""
                position += 1
        except csv.Error as err:
            raise InputError(f"bad tab-separated row: {err}", path, reader.line_num) from err
        except UnicodeDecodeError as err:
            raise InputError(f"not valid UTF-8: {err}", path, reader.line_num + 1) from err


_READERS = {"json": _json_questions, "jsonl": _jsonl_questions, "qa-tsv": _tsv_questions}


def read_questions(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """Questions as a table (query_id, text, answers), strictly checked (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    fmt = question_format(path) if fmt == "auto" else fmt
    if fmt not in _READERS:
        raise InputError(f"unknown question format {fmt!r}; known: {QUESTION_FORMATS}", path)
    ids, texts, answers = [], [], []
    seen: dict[str, str] = {}
    for qid, question, answer_list, line, item in _READERS[fmt](path):
        where = item.rstrip(": ") if line is None else f"line {line}"
        if qid in seen:
            raise InputError(
                f"{item}duplicate question id {qid!r} (first at {seen[qid]})", path, line
            )
        seen[qid] = where
        ids.append(qid)
        texts.append(question)
        answers.append(answer_list)
    if not ids:
        raise InputError("no questions in the file", path)
    return pd.DataFrame({"query_id": ids, "text": texts, "answers": answers})


class _SeenIds:
    """Duplicate check for millions of passage ids without a set of millions of strings.

    DPR's ids are 1..21M: ids written as plain non-negative integers below 2**31 are
    kept as bits (a few MB), any other id in a set.
    """

    _BIT_LIMIT = 1 << 31

    def __init__(self) -> None:
        self.bits = bytearray()
        self.other: set[str] = set()

    def add(self, doc_id: str) -> bool:
        """Record `doc_id`; False when it was seen before."""
        if doc_id.isascii() and doc_id.isdigit() and (doc_id == "0" or doc_id[0] != "0"):
            n = int(doc_id)
            if n < self._BIT_LIMIT:
                byte, bit = divmod(n, 8)
                if byte >= len(self.bits):
                    self.bits.extend(bytes(max(byte + 1, 2 * len(self.bits)) - len(self.bits)))
                if self.bits[byte] >> bit & 1:
                    return False
                self.bits[byte] |= 1 << bit
                return True
        if doc_id in self.other:
            return False
        self.other.add(doc_id)
        return True


def _passage_rows(path: Path, raw: IO[bytes], progress: Progress) -> Iterator[list[str]]:
    """Checked [id, text, title] rows of a DPR passage file, with progress by bytes read."""
    binary: IO[bytes] = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
    text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
    reader = csv.reader(text, delimiter="\t")
    seen = _SeenIds()
    reported = 0
    try:
        header = next(reader, None)
        if header is not None and header[:1]:
            header[0] = header[0].lstrip("\ufeff")
        if header != PASSAGES_HEADER:
            raise InputError(
                f"expected the header {chr(9).join(PASSAGES_HEADER)!r} of DPR's passage "
                f"file, got {header!r:.200}",
                path,
                1,
            )
        for n, row in enumerate(reader, 1):
            line = reader.line_num
            if len(row) != 3:
                raise InputError(
                    f"expected 3 tab-separated fields (id, text, title), got {len(row)}",
                    path,
                    line,
                )
            doc_id = row[0]
            if not doc_id:
                raise InputError("passage id is empty", path, line)
            if not seen.add(doc_id):
                raise InputError(f"duplicate passage id {doc_id!r}", path, line)
            if n % _PROGRESS_EVERY == 0:
                position = raw.tell()
                progress.update(position - reported)
                reported = position
            yield row
        progress.update(progress.total - reported)
    except csv.Error as err:
        raise InputError(f"bad tab-separated row: {err}", path, reader.line_num) from err
    except UnicodeDecodeError as err:
        raise InputError(f"not valid UTF-8: {err}", path, reader.line_num + 1) from err
    except (EOFError, gzip.BadGzipFile) as err:
        raise InputError(f"broken gzip stream: {err}", path, reader.line_num) from err


def _batch(rows: list[list[str]]) -> pa.RecordBatch:
    ids, texts, titles = zip(*rows, strict=True)
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array(titles, pa.string()), pa.array(texts, pa.string())],
        schema=CORPUS_SCHEMA,
    )


def convert_passages(
    tsv_path: str | Path, out_parquet: str | Path, batch_rows: int = 100_000
) -> int:
    """Stream DPR's `psgs_w100.tsv` (or .tsv.gz) into a corpus parquet; return the row count.

    One row group per `batch_rows` passages, so memory stays at one batch; the parquet
    appears only once the whole file has been read and checked. Errors name the file
    and line: wrong header, a row without exactly id/text/title, an empty or duplicate
    id. An empty title is allowed (the passage is encoded as its text alone).
    """
    path = Path(tsv_path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    size = path.stat().st_size
    progress = Progress(size, f"converting {path.name}", log, unit="bytes")
    count = 0
    # Snappy parquet of this text is smaller than the plain tsv; a gzip'd tsv is about
    # half the size of the parquet it makes (an estimate, not a bound).
    gz = path.suffix == ".gz"
    needed = 2 * size if gz else size
    with atomic_path(out_parquet, needed=needed, needed_is_bound=not gz) as tmp:
        with open(path, "rb") as raw, pq.ParquetWriter(tmp, CORPUS_SCHEMA) as writer:
            rows: list[list[str]] = []
            for row in _passage_rows(path, raw, progress):
                rows.append(row)
                if len(rows) == batch_rows:
                    writer.write_batch(_batch(rows))
                    count += len(rows)
                    rows = []
            if rows:
                writer.write_batch(_batch(rows))
                count += len(rows)
        if count == 0:
            raise InputError("no passages after the header", path)
    log.info("%s: %d passages -> %s", path, count, out_parquet)
    return count


def write_dpr_tsv(corpus: pd.DataFrame, path: str | Path) -> None:
    """Write a corpus table in DPR's passage format (header, csv tab-delimited; .gz ok).

    csv quoting protects tabs, quotes and line breaks inside text and titles, so
    `convert_passages` reads back exactly the same strings.
    """
    path = Path(path)
    with atomic_path(path) as tmp, _open_text(tmp, "w", gz=path.suffix == ".gz") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(PASSAGES_HEADER)
        for doc_id, text, title in zip(
            corpus["doc_id"], corpus["text"], corpus["title"], strict=True
        ):
            writer.writerow([doc_id, text, "" if title is None else title])


def cut_into_passages(
    articles: Iterable[tuple[str, str]], words: int = 100, first_id: int = 1
) -> pd.DataFrame:
    """DPR's passage cutting: each article's text in consecutive blocks of `words` words.

    Words are whitespace-separated tokens; blocks do not overlap and the last block of
    an article may be shorter. Every block keeps the article's title; ids are
    consecutive integers from `first_id`, as strings. Articles without words give none.
    """
    if words < 1:
        raise ValueError(f"words must be positive, got {words}")
    ids, titles, texts = [], [], []
    for title, text in articles:
        tokens = text.split()
        for start in range(0, len(tokens), words):
            ids.append(str(first_id + len(ids)))
            titles.append(title)
            texts.append(" ".join(tokens[start : start + words]))
    return pd.DataFrame({"doc_id": ids, "title": titles, "text": texts}, dtype=object)


_COPULAS = frozenset({"is", "was", "are", "were"})


def _title_of(tokens: list[str], title_words: int) -> str:
    """The subject before the first is/was/are/were among the first `title_words` words,
    else the first four words."""
    head = tokens[:title_words]
    cut = next((i for i, t in enumerate(head) if t in _COPULAS and i > 0), None)
    title = " ".join(tokens[:cut] if cut is not None else tokens[:4])
    return title.rstrip(",;:") or title


def articles_from_lines(
    path: str | Path, limit: int | None = None, title_words: int = 8
) -> Iterator[tuple[str, str]]:
    """(title, text) per non-blank line of a one-article-per-line file without titles.

    Such files (the shared Wikipedia lead sections) start like Wikipedia does, with the
    subject: "The 14th Dalai Lama is the current ...". The title is the words before
    the first "is/was/are/were" within the first `title_words` words ("The 14th Dalai
    Lama"), trailing ",;:" removed; a line without one there takes its first four words.
    The text is the whole line, title words included.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    done = 0
    with _open_text(path) as f:
        lineno = 0
        try:
            for line in f:
                lineno += 1
                if limit is not None and done >= limit:
                    return
                tokens = line.split()
                if not tokens:
                    continue
                yield _title_of(tokens, title_words), " ".join(tokens)
                done += 1
        except UnicodeDecodeError as err:
            raise InputError(f"not valid UTF-8: {err}", path, lineno + 1) from err


def passage_texts(corpus_path: str | Path, doc_ids: Iterable[str]) -> dict[str, str]:
    """The text (not the title) of the given passages of a corpus parquet, read in row
    groups so that a 21M-passage collection never sits in memory; an id the corpus lacks
    is an InputError naming it."""
    wanted = set(map(str, doc_ids))
    path = Path(corpus_path)
    if not path.exists():
        raise InputError("file does not exist", path)
    found: dict[str, str] = {}
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(columns=["doc_id", "text"], batch_size=200_000):
        ids = batch.column(0).to_pylist()
        texts = batch.column(1)
        for i, doc_id in enumerate(ids):
            if doc_id in wanted:
                found[doc_id] = texts[i].as_py()
    missing = wanted.difference(found)
    if missing:
        raise InputError(
            f"{len(missing)} retrieved passage(s) are not in the collection, e.g. "
            f"{sorted(missing)[:3]}; were the embeddings made from another corpus?",
            path,
        )
    return found
