"""Supervised fine-tuning sets: training queries with their positives and negatives.

A fine-tuning set is three tables: queries `(query_id, text)`, the passage collection
(the corpus table, usually the evaluation unit's own corpus) and *records*, one row per
training query (io.RECORDS_SCHEMA):

  query_id       str
  positive_ids   list<str>  relevant passages, in qrels (or file) order
  negative_ids   list<str>  hard / imported negatives, possibly empty
  negative_kind  str        "none" | "imported" | "mined"

Random negatives are not stored: they are drawn from the whole collection at batch time
(training/finetune_batches.py), which replaces the DPR files' `negative_ctxs`.

Sources: a BEIR training split (`convert_training_split`, e.g. MS MARCO train, SciFact
train), or the user's own jsonl in BGE/FlagEmbedding style (`{"query", "pos", "neg"}`)
or DPR style (`{"question", "positive_ctxs", "hard_negative_ctxs", ...}`, spec §10.1).
Such files give passages as text, so ids are made from the text (`passage_id`/`id`
when DPR gives one) and stay the same across runs and round trips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..errors import InputError
from ..io import atomic_dir, atomic_path, write_table
from . import beir
from .text import passage_text

log = logging.getLogger(__name__)

NEGATIVE_KINDS = ("none", "imported", "mined")
RECORD_COLUMNS = ("query_id", "positive_ids", "negative_ids", "negative_kind")
PAIR_STYLES = ("bge", "dpr")
_SHOW = 5  # ids quoted in an error message listing many


# --------------------------------------------------------------------------- ids


def query_id_for(query: str) -> str:
    """Stable id of a query given only as text."""
    return "q" + hashlib.sha1(query.encode("utf-8")).hexdigest()[:16]


def passage_id_for(title: str, text: str) -> str:
    """Stable id of a passage given only as (title, text)."""
    return "p" + hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- qrels


def records_from_qrels(
    qrels: pd.DataFrame,
    corpus_ids: Iterable[str],
    where: str,
    min_relevance: int = 1,
    corpus_name: str = "the corpus",
) -> pd.DataFrame:
    """One record per judged query: positives = docs with relevance >= min_relevance.

    Every doc id must be in `corpus_ids` (a passage the model can never see as a key is
    a broken training pair), and every query must keep at least one positive. Errors
    name `where` (the qrels file) and, when `qrels` has beir's `line` column, the line.
    """
    missing = [c for c in ("query_id", "doc_id", "relevance") if c not in qrels.columns]
    if missing:
        raise InputError(f"qrels table lacks columns {missing}", where)
    if qrels.empty:
        raise InputError("no qrels rows", where)
    qrels = qrels.drop_duplicates(["query_id", "doc_id"], keep="last")
    known = corpus_ids if isinstance(corpus_ids, pd.Index) else pd.Index(corpus_ids)
    bad = ~qrels["doc_id"].isin(known)
    if bad.any():
        first = qrels[bad].iloc[0]
        raise InputError(
            f"corpus-id {first['doc_id']!r} (query {first['query_id']!r}) is not in "
            f"{corpus_name}; {int(bad.sum())} qrels row(s) name passages missing from it",
            where,
            int(first["line"]) if "line" in qrels.columns else None,
        )
    order = pd.unique(qrels["query_id"])
    pos = qrels[qrels["relevance"] >= min_relevance]
    grouped = pos.groupby("query_id", sort=False)["doc_id"].agg(list)
    lacking = [q for q in order if q not in grouped.index]
    if lacking:
        rows = qrels[qrels["query_id"] == lacking[0]]
        raise InputError(
            f"{len(lacking)} training quer{'y has' if len(lacking) == 1 else 'ies have'} no "
            f"judgement with relevance >= {min_relevance} (no positive to train on): "
            f"first {[str(q) for q in lacking[:_SHOW]]}",
            where,
            int(rows["line"].iloc[0]) if "line" in rows.columns else None,
        )
    return pd.DataFrame(
        {
            "query_id": pd.Series(order, dtype=object).astype(str),
            "positive_ids": [list(map(str, grouped[q])) for q in order],
            "negative_ids": [[] for _ in order],
            "negative_kind": "none",
        }
    )


def _corpus_doc_ids(corpus_parquet: str | Path) -> pd.Index:
    """Only the doc_id column: MS MARCO's 8.8M passage texts need not be loaded."""
    path = Path(corpus_parquet)
    if not path.is_file():
        raise InputError("corpus table does not exist", path)
    if "doc_id" not in pq.read_schema(path).names:
        raise InputError("not a corpus table: no 'doc_id' column", path)
    return pd.Index(pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pandas())


def convert_training_split(
    folder: str | Path,
    split: str,
    corpus_parquet: str | Path,
    out_queries: str | Path,
    out_records: str | Path,
    min_relevance: int = 1,
) -> dict[str, int]:
    """A BEIR folder's training split → queries + records tables, checked against the
    already converted corpus.

    Reads `<folder>/queries.jsonl` and `<folder>/qrels/<split>.tsv`; every query id must
    be in queries.jsonl and every doc id in the corpus table. All checks come before
    the first (atomic) write, so bad input leaves no output. Returns counts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("dataset folder does not exist", folder)
    qrels_path = beir._qrels_path(folder, split)
    qrels = beir._read_qrels_lines(qrels_path)
    queries = beir.read_queries(folder / "queries.jsonl")
    beir._unknown_ids(qrels, "query_id", queries["query_id"], qrels_path, "queries.jsonl", True)
    corpus_ids = _corpus_doc_ids(corpus_parquet)
    records = records_from_qrels(
        qrels, corpus_ids, str(qrels_path), min_relevance, corpus_name=str(corpus_parquet)
    )
    queries = queries[queries["query_id"].isin(records["query_id"])].reset_index(drop=True)
    write_table(queries, out_queries, "queries")
    write_table(records, out_records, "records")
    counts = {
        "queries": len(records),
        "positives": int(records["positive_ids"].map(len).sum()),
        "qrels_rows": len(qrels),
        "corpus_docs": len(corpus_ids),
    }
    log.info("%s [%s]: %s", folder, split, counts)
    return counts


def holdout_dev(
    records: pd.DataFrame, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded random dev hold-out of floor(fraction · n) records (paper A.3: SciFact keeps
    729 of its 809 training queries). Both parts keep the input's row order."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"dev fraction must be in [0, 1), got {fraction}")
    n = len(records)
    n_dev = math.floor(fraction * n + 1e-9)
    dev_rows = np.zeros(n, dtype=bool)
    dev_rows[np.random.default_rng(seed).permutation(n)[:n_dev]] = True
    train = records[~dev_rows].reset_index(drop=True)
    dev = records[dev_rows].reset_index(drop=True)
    return train, dev


# --------------------------------------------------------------------------- jsonl


def _entries(path: Path) -> Iterator[tuple[int | None, str, dict]]:
    """(line or None, where-prefix for messages, object) for .jsonl lines or a .json list."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"malformed JSON: {err}", path) from err
        if not isinstance(data, list):
            raise InputError(f"expected a JSON list of examples, got {type(data).__name__}", path)
        for k, row in enumerate(data):
            if not isinstance(row, dict):
                raise InputError(f"entry {k}: expected a JSON object", path)
            yield None, f"entry {k}: ", row
    else:
        for lineno, row in beir._json_rows(path):
            yield lineno, "", row


class _PairsReader:
    """Accumulates examples; duplicate queries merge their positives and negatives."""

    def __init__(self, path: Path):
        self.path = path
        self.passages: dict[str, tuple[str, str]] = {}
        self.queries: dict[str, str] = {}
        self.pos: dict[str, dict[str, None]] = {}
        self.neg: dict[str, dict[str, None]] = {}
        self.random_negatives_ignored = 0

    def fail(self, msg: str, line: int | None, prefix: str) -> None:
        raise InputError(prefix + msg, self.path, line)

    def text(self, row: dict, key: str, line, prefix, required: bool = True) -> str:
        value = row.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            what = "missing" if value is None else f"not a non-empty string ({value!r:.40})"
            self.fail(f"{key!r} is {what}", line, prefix)
        return value

    def strings(self, row: dict, key: str, line, prefix, required: bool) -> list[str]:
        value = row.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list) or (required and not value):
            self.fail(f"{key!r} must be a non-empty list", line, prefix)
        for k, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fail(f"{key}[{k}] is not a non-empty string", line, prefix)
        return value

    def ctxs(self, row: dict, key: str, line, prefix, required: bool) -> list[str]:
        """DPR contexts → passage ids (registering the passages)."""
        value = row.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list) or (required and not value):
            self.fail(f"{key!r} must be a non-empty list of {{title, text}}", line, prefix)
        ids = []
        for k, ctx in enumerate(value):
            where = f"{prefix}{key}[{k}]: "
            if not isinstance(ctx, dict):
                self.fail("expected an object with 'title' and 'text'", line, where)
            text = self.text(ctx, "text", line, where)
            title = self.text(ctx, "title", line, where, required=False)
            pid = ctx.get("passage_id", ctx.get("id"))
            if isinstance(pid, bool) or not isinstance(pid, str | int | type(None)):
                self.fail(f"passage id must be a string, got {pid!r:.40}", line, where)
            pid = passage_id_for(title, text) if pid in (None, "") else str(pid)
            ids.append(self.add_passage(pid, title, text, line, where))
        return ids

    def add_passage(self, pid: str, title: str, text: str, line, prefix) -> str:
        seen = self.passages.setdefault(pid, (title, text))
        if seen != (title, text):
            self.fail(f"passage id {pid!r} was given earlier with another text", line, prefix)
        return pid

    def add(self, line: int | None, prefix: str, row: dict) -> None:
        if "query" in row:
            query = self.text(row, "query", line, prefix)
            pos = [
                self.add_passage(passage_id_for("", t), "", t, line, prefix)
                for t in self.strings(row, "pos", line, prefix, required=True)
            ]
            neg = [
                self.add_passage(passage_id_for("", t), "", t, line, prefix)
                for t in self.strings(row, "neg", line, prefix, required=False)
            ]
        elif "question" in row:
            query = self.text(row, "question", line, prefix)
            pos = self.ctxs(row, "positive_ctxs", line, prefix, required=True)
            neg = self.ctxs(row, "hard_negative_ctxs", line, prefix, required=False)
            if row.get("negative_ctxs"):
                self.random_negatives_ignored += 1
        else:
            self.fail(
                "missing query: no 'query' (BGE style) or 'question' (DPR style) key", line, prefix
            )
        qid = query_id_for(query)
        self.queries.setdefault(qid, query)
        self.pos.setdefault(qid, {}).update(dict.fromkeys(pos))
        self.neg.setdefault(qid, {}).update(dict.fromkeys(neg))

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        if not self.queries:
            raise InputError("no training examples: the file is empty", self.path)
        if self.random_negatives_ignored:
            log.info(
                "%s: ignoring 'negative_ctxs' of %d example(s): random negatives are drawn "
                "from the whole passage collection at training time",
                self.path,
                self.random_negatives_ignored,
            )
        qids = list(self.queries)
        queries = pd.DataFrame(
            {"query_id": qids, "text": list(self.queries.values())}, dtype=object
        )
        corpus = pd.DataFrame(
            {
                "doc_id": list(self.passages),
                "title": [t for t, _ in self.passages.values()],
                "text": [x for _, x in self.passages.values()],
            },
            dtype=object,
        )
        positives = [list(self.pos[q]) for q in qids]
        negatives = [[d for d in self.neg[q] if d not in self.pos[q]] for q in qids]
        records = pd.DataFrame(
            {
                "query_id": qids,
                "positive_ids": positives,
                "negative_ids": negatives,
                "negative_kind": ["imported" if n else "none" for n in negatives],
            }
        )
        return queries, corpus, records


def read_pairs_jsonl(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A user's training set → (queries, corpus, records) tables.

    Accepts BGE/FlagEmbedding lines `{"query", "pos": [str], "neg": [str]}` and DPR
    examples `{"question", "positive_ctxs", "hard_negative_ctxs", "negative_ctxs"}` as
    `.jsonl` or as a `.json` list. Hard negatives (BGE `neg`, DPR `hard_negative_ctxs`)
    become records' negatives ("imported"); DPR's random `negative_ctxs` are ignored
    (logged), since random negatives are drawn from the collection. A negative that is
    also a positive of its query is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    reader = _PairsReader(path)
    for line, prefix, row in _entries(path):
        reader.add(line, prefix, row)
    return reader.tables()


def write_pairs_jsonl(
    queries_df: pd.DataFrame,
    corpus_df: pd.DataFrame,
    records_df: pd.DataFrame,
    path: str | Path,
    style: str = "bge",
) -> int:
    """Export records as BGE or DPR jsonl (atomic write); returns the number of lines.

    BGE lines carry passages as "title text" strings (no ids); DPR lines keep title,
    text and `passage_id`, so `read_pairs_jsonl` gets the same ids back.
    """
    if style not in PAIR_STYLES:
        raise InputError(f"unknown jsonl style {style!r}; expected one of {PAIR_STYLES}")
    qtext = pd.Series(queries_df["text"].to_numpy(), index=queries_df["query_id"].to_numpy())
    pos_of = pd.Index(corpus_df["doc_id"])
    titles = corpus_df["title"].fillna("").to_numpy(dtype=object)
    texts = corpus_df["text"].to_numpy(dtype=object)

    def ctx(doc: str, qid: str):
        try:
            k = pos_of.get_loc(doc)
        except KeyError:
            raise InputError(
                f"passage {doc!r} of query {qid!r} is not in the corpus table", path
            ) from None
        if style == "bge":
            return passage_text(titles[k], texts[k])
        return {"title": titles[k], "text": texts[k], "passage_id": doc}

    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for qid, pos, neg in zip(
            records_df["query_id"],
            records_df["positive_ids"],
            records_df["negative_ids"],
            strict=True,
        ):
            if qid not in qtext.index:
                raise InputError(f"query {qid!r} is not in the queries table", path)
            p = [ctx(d, qid) for d in pos]
            h = [ctx(d, qid) for d in neg]
            if style == "bge":
                obj = {"query": qtext[qid], "pos": p, "neg": h}
            else:
                obj = {
                    "question": qtext[qid],
                    "positive_ctxs": p,
                    "negative_ctxs": [],
                    "hard_negative_ctxs": h,
                }
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_beir_folder(
    queries_df: pd.DataFrame,
    corpus_df: pd.DataFrame,
    records_df: pd.DataFrame,
    folder: str | Path,
    split: str = "train",
) -> dict[str, int]:
    """A training set as a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv
    with each positive at relevance 1), so that a user's jsonl becomes a `source: local`
    data set the fine-tuning rules read like any other. Written whole or not at all.
    The records' own negatives are not part of the BEIR layout; their count is returned.
    """
    with atomic_dir(folder) as tmp:
        (tmp / "qrels").mkdir()
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as fh:
            for doc, title, text in zip(
                corpus_df["doc_id"], corpus_df["title"].fillna(""), corpus_df["text"], strict=True
            ):
                fh.write(json.dumps({"_id": doc, "title": title, "text": text}, ensure_ascii=False))
                fh.write("\n")
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as fh:
            for qid, text in zip(queries_df["query_id"], queries_df["text"], strict=True):
                fh.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
        pairs = records_df[["query_id", "positive_ids"]].explode("positive_ids").dropna()
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, doc in zip(pairs["query_id"], pairs["positive_ids"], strict=True):
                fh.write(f"{qid}\t{doc}\t1\n")
    negatives = int(records_df["negative_ids"].map(len).sum())
    return {
        "passages": len(corpus_df),
        "queries": len(queries_df),
        "qrels": len(pairs),
        "negatives_not_written": negatives,
    }
