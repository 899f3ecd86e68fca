"""Parquet tables between workflow steps: fixed schemas, atomic writes.

Schemas (IDs are always strings):
  corpus  (doc_id, title, text)
  queries (query_id, text)
  qrels   (query_id, doc_id, relevance)
  run     (query_id, doc_id, rank, score)
  metrics long form (model, dataset, split, metric, value, ...)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError

CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("query_id", pa.string()), ("text", pa.string())])
QRELS_SCHEMA = pa.schema(
    [("query_id", pa.string()), ("doc_id", pa.string()), ("relevance", pa.int32())]
)
RUN_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
    ]
)

SCHEMAS = {
    "corpus": CORPUS_SCHEMA,
    "queries": QUERIES_SCHEMA,
    "qrels": QRELS_SCHEMA,
    "run": RUN_SCHEMA,
}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path that is renamed onto `path` only on success.

    A crash or exception leaves nothing at `path`, so no half-written file ever
    looks complete to Snakemake or to a later step.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_table(df: pd.DataFrame, path: str | Path, kind: str | None = None) -> None:
    """Write a DataFrame as parquet atomically, cast to the named schema when given."""
    if kind is not None:
        schema = SCHEMAS[kind]
        missing = [c for c in schema.names if c not in df.columns]
        if missing:
            raise ValueError(f"{kind} table is missing columns {missing}")
        table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    else:
        table = pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, kind: str | None = None) -> pd.DataFrame:
    """Read a parquet table, checking the named schema's columns are present."""
    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path)
    df = pq.read_table(path).to_pandas()
    if kind is not None:
        missing = [c for c in SCHEMAS[kind].names if c not in df.columns]
        if missing:
            raise InputError(f"not a {kind} table: missing columns {missing}", path)
    return df


def write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `path` only if the block succeeds."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
