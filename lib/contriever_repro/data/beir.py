"""Read BEIR dataset folders once, strictly, and turn them into the project's tables.

BEIR's own loader (`GenericDataLoader`) silently drops the first qrels row when
the header is missing, turns numeric-looking ids into whatever the parser makes
of them and crashes late on a missing title. Everything downstream of this module
reads parquet with a fixed schema, so every such problem is caught here, at the
edge, with the file and line that caused it.

Layout: `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`)
and `qrels/<split>.tsv` (header, then query-id, corpus-id, integer score).
"""

from __future__ import annotations

import json
import logging
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..io import write_table
from ..progress import Progress

log = logging.getLogger(__name__)

CQADUPSTACK_FORUMS = (
    "android",
    "english",
    "gaming",
    "gis",
    "mathematica",
    "physics",
    "programmers",
    "stats",
    "tex",
    "unix",
    "webmasters",
    "wordpress",
)

# Check the progress clock only every this many lines: cheap even for 8.8M passages.
_PROGRESS_EVERY = 100_000


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InputError("file does not exist", path)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line) for non-blank lines, logging progress.

    Blank lines are skipped (a trailing empty line is common in hand-edited files);
    line numbers still count them so messages point at the right place.
    """
    _require_file(path)
    progress = Progress(path.stat().st_size, f"reading {path.name}", log, unit="bytes")
    pending = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            pending += len(raw)
            if lineno % _PROGRESS_EVERY == 0:
                progress.update(pending)
                pending = 0
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"not valid UTF-8: {err}", path, lineno) from err
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if line.strip():
                yield lineno, line


# One decoder for all lines: json.loads would re-detect the encoding of every line.
_decode_json = json.JSONDecoder().decode


def _json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in _lines(path):
        try:
            row = _decode_json(line)
        except ValueError as err:
            raise InputError(f"malformed JSON: {err}", path, lineno) from err
        if not isinstance(row, dict):
            raise InputError(f"expected a JSON object, got {type(row).__name__}", path, lineno)
        yield lineno, row


def _id_of(row: dict, path: Path, lineno: int) -> str:
    """The row's `_id` as a string; ints are accepted (and stringified) but not floats."""
    if "_id" not in row:
        raise InputError("row has no '_id'", path, lineno)
    value = row["_id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"'_id' must be a string, got {type(value).__name__} {value!r}", path, lineno
        )
    value = str(value)
    if not value:
        raise InputError("'_id' is empty", path, lineno)
    return value


def _text_of(row: dict, key: str, path: Path, lineno: int, required: bool) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise InputError(f"row has no '{key}' (or it is null)", path, lineno)
        return ""
    if not isinstance(value, str):
        raise InputError(f"'{key}' must be a string, got {type(value).__name__}", path, lineno)
    return value


def _check_unique(ids: list[str], linenos: array, path: Path, what: str) -> None:
    """Vectorised duplicate check: a dict of 8.8M ids would cost gigabytes."""
    series = pd.Series(ids, dtype=object)
    dup = series.duplicated(keep="first")
    if not dup.any():
        return
    n = int(dup.sum())
    second = int(dup.to_numpy().argmax())
    first = int((series == series.iloc[second]).to_numpy().argmax())
    raise InputError(
        f"duplicate {what} {ids[second]!r} (first on line {linenos[first]}); "
        f"{n} duplicate row(s) in total",
        path,
        linenos[second],
    )


def _read_jsonl(path: str | Path, with_title: bool, what: str) -> tuple[pd.DataFrame, array]:
    path = Path(path)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    linenos = array("q")
    for lineno, row in _json_rows(path):
        ids.append(_id_of(row, path, lineno))
        if with_title:
            titles.append(_text_of(row, "title", path, lineno, required=False))
        texts.append(_text_of(row, "text", path, lineno, required=True))
        linenos.append(lineno)
    if not ids:
        noun = "documents" if with_title else "queries"
        raise InputError(f"no {noun}: the file is empty", path)
    _check_unique(ids, linenos, path, what)
    id_col = "doc_id" if with_title else "query_id"
    columns = (
        {id_col: ids, "title": titles, "text": texts}
        if with_title
        else {id_col: ids, "text": texts}
    )
    return pd.DataFrame(columns, dtype=object), linenos


def read_corpus(path: str | Path) -> pd.DataFrame:
    """corpus.jsonl as (doc_id, title, text); a missing title becomes ""."""
    df, _ = _read_jsonl(path, with_title=True, what="doc id")
    return df


def read_queries(path: str | Path) -> pd.DataFrame:
    """queries.jsonl as (query_id, text); other keys (metadata) are dropped."""
    df, _ = _read_jsonl(path, with_title=False, what="query id")
    return df


def _read_qrels_lines(path: str | Path) -> pd.DataFrame:
    """qrels TSV with a `line` column, so later checks can point at the offending row."""
    path = Path(path)
    qids: list[str] = []
    dids: list[str] = []
    scores: list[int] = []
    linenos: list[int] = []
    header_seen = False
    for lineno, line in _lines(path):
        fields = line.rstrip("\r\n").split("\t")
        if not header_seen:
            header_seen = True
            if len(fields) == 3 and _is_int(fields[2]):
                raise InputError(
                    "missing header: the first line looks like a data row "
                    "(expected 'query-id<TAB>corpus-id<TAB>score')",
                    path,
                    lineno,
                )
            continue
        if len(fields) != 3:
            raise InputError(
                f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(fields)}",
                path,
                lineno,
            )
        qid, did, score = fields
        if not qid or not did:
            raise InputError("empty query-id or corpus-id", path, lineno)
        if not _is_int(score):
            raise InputError(f"score must be an integer, got {score!r}", path, lineno)
        qids.append(qid)
        dids.append(did)
        scores.append(int(score))
        linenos.append(lineno)
    if not header_seen:
        raise InputError("empty qrels file: missing header", path)
    if not qids:
        raise InputError("no qrels rows after the header", path)
    df = pd.DataFrame({"query_id": qids, "doc_id": dids}, dtype=object)
    df["relevance"] = pd.Series(scores, dtype="int32")
    df["line"] = linenos
    dup = df.duplicated(["query_id", "doc_id"], keep="last")
    if dup.any():
        # beir merges rows into a dict, so the last score for a pair wins.
        log.warning(
            "%s: %d repeated (query-id, corpus-id) pair(s); keeping the last score, as beir does",
            path,
            int(dup.sum()),
        )
        df = df[~dup].reset_index(drop=True)
    return df


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_qrels(path: str | Path) -> pd.DataFrame:
    """qrels/<split>.tsv as (query_id, doc_id, relevance int32); ids stay strings."""
    return _read_qrels_lines(path).drop(columns="line")


def _qrels_path(folder: Path, split: str) -> Path:
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise InputError(f"no qrels for split {split!r}; splits present: {splits or 'none'}", path)
    return path


def _unknown_ids(
    qrels: pd.DataFrame,
    column: str,
    known: pd.Series,
    qrels_path: Path,
    source: str,
    strict: bool,
) -> pd.Series:
    """Mask of qrels rows whose `column` is not in `known`; raises when strict."""
    bad = ~qrels[column].isin(known)
    if bad.any() and strict:
        first = qrels[bad].iloc[0]
        what = "query-id" if column == "query_id" else "corpus-id"
        raise InputError(
            f"{what} {first[column]!r} is not in {source}; "
            f"{int(bad.sum())} qrels row(s) have a {what} missing from {source} "
            "(strict=False drops them with a warning)",
            qrels_path,
            int(first["line"]),
        )
    return bad


def load_beir_folder(
    folder: str | Path, split: str, strict: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(corpus, queries, qrels) for one split, as beir's GenericDataLoader sees them.

    Queries are restricted to those with qrels in the split. Qrels pointing at an
    unknown query or document are an error when `strict`, else dropped with a
    warning (beir would keep them and count them against recall).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("dataset folder does not exist", folder)
    qrels_path = _qrels_path(folder, split)
    qrels = _read_qrels_lines(qrels_path)
    queries = read_queries(folder / "queries.jsonl")
    corpus = read_corpus(folder / "corpus.jsonl")

    bad_q = _unknown_ids(
        qrels, "query_id", queries["query_id"], qrels_path, "queries.jsonl", strict
    )
    bad_d = _unknown_ids(qrels, "doc_id", corpus["doc_id"], qrels_path, "corpus.jsonl", strict)
    if bad_q.any() or bad_d.any():
        log.warning(
            "%s: dropping %d qrels row(s) with unknown query ids and %d with unknown "
            "corpus ids (%d rows in all, %d kept)",
            qrels_path,
            int(bad_q.sum()),
            int(bad_d.sum()),
            int((bad_q | bad_d).sum()),
            int((~(bad_q | bad_d)).sum()),
        )
        qrels = qrels[~(bad_q | bad_d)]
        if qrels.empty:
            raise InputError("no qrels rows left after dropping unknown ids", qrels_path)
    qrels = qrels.drop(columns="line").reset_index(drop=True)
    queries = queries[queries["query_id"].isin(qrels["query_id"])].reset_index(drop=True)
    log.info(
        "%s [%s]: %d docs, %d queries, %d qrels",
        folder,
        split,
        len(corpus),
        len(queries),
        len(qrels),
    )
    return corpus, queries, qrels


def convert_beir_folder(
    folder: str | Path,
    split: str,
    out_corpus: str | Path,
    out_queries: str | Path,
    out_qrels: str | Path,
    strict: bool = True,
) -> dict[str, int]:
    """Validate a BEIR folder completely, then write the three parquet tables.

    All reading and checking happens before the first write, so a bad input
    leaves no output at all; each write is atomic. Returns the row counts.
    """
    corpus, queries, qrels = load_beir_folder(folder, split, strict=strict)
    write_table(corpus, out_corpus, "corpus")
    write_table(queries, out_queries, "queries")
    write_table(qrels, out_qrels, "qrels")
    return {"docs": len(corpus), "queries": len(queries), "qrels": len(qrels)}


def _missing_files(forum_dir: Path) -> list[str]:
    needed = ("corpus.jsonl", "queries.jsonl", "qrels")
    return [name for name in needed if not (forum_dir / name).exists()]


def list_subforums(
    folder: str | Path, expected: Iterable[str] | None = CQADUPSTACK_FORUMS
) -> list[str]:
    """Sub-forum names of an unpacked CQADupStack folder, each a BEIR folder.

    The reported score is the mean over the forums, so a missing forum would
    silently change it: with `expected` (the 12 official forums by default) any
    missing or incomplete one is an error, and extra folders are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("CQADupStack folder does not exist", folder)
    present = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if expected is None:
        forums = [name for name in present if not _missing_files(folder / name)]
        if not forums:
            raise InputError(
                "no sub-forum folders with corpus.jsonl, queries.jsonl, qrels/", folder
            )
        return forums
    expected = list(expected)
    missing = [name for name in expected if name not in present]
    if missing:
        raise InputError(f"missing sub-forum folder(s) {missing}; found {present}", folder)
    for name in expected:
        lacking = _missing_files(folder / name)
        if lacking:
            raise InputError(f"sub-forum lacks {lacking}", folder / name)
    extra = sorted(set(present) - set(expected))
    if extra:
        log.warning("%s: ignoring folder(s) that are not CQADupStack forums: %s", folder, extra)
    return sorted(expected)
