"""Parquet tables between workflow steps: fixed schemas, atomic writes.

Schemas (IDs are always strings):
  corpus  (doc_id, title, text)
  queries (query_id, text)
  qrels   (query_id, doc_id, relevance)
  run     (query_id, doc_id, rank, score)
  records (query_id, positive_ids list, negative_ids list, negative_kind): training queries
  answers (query_id, answers list): answers of a question set, matched in passage texts
  metrics long form (model, dataset, split, metric, value, ...)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import DiskFullError, InputError

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
# One row per fine-tuning query; a fixed schema so an all-empty list column is still
# list<string> (inferred, it would be list<null>).
RECORDS_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("positive_ids", pa.list_(pa.string())),
        ("negative_ids", pa.list_(pa.string())),
        ("negative_kind", pa.string()),
    ]
)

# A question set's answers (open-domain QA, MKQA): matched against passage texts.
ANSWERS_SCHEMA = pa.schema([("query_id", pa.string()), ("answers", pa.list_(pa.string()))])

SCHEMAS = {
    "corpus": CORPUS_SCHEMA,
    "queries": QUERIES_SCHEMA,
    "qrels": QRELS_SCHEMA,
    "run": RUN_SCHEMA,
    "records": RECORDS_SCHEMA,
    "answers": ANSWERS_SCHEMA,
}


# A write that fails like this means the file system is full (or the user's quota is).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Libraries that lose the errno keep its text: pyarrow ("[errno 28] No space left on
# device"), safetensors/Rust ("(os error 28)").
_FULL_TEXTS = {no: (os.strerror(no), f"os error {no}", f"errno {no}") for no in _FULL_ERRNOS}
# Some writers report a failed write with neither (numpy's tofile: "N requested and M
# written", torch.save: "unexpected pos"); if the file system has less than this left at
# that moment, such an errno-less failure is taken to be a full disk.
NEARLY_FULL_BYTES = 1 << 20


def free_bytes(directory: str | Path) -> int:
    """Bytes an unprivileged process can still write on `directory`'s file system."""
    return shutil.disk_usage(directory).free


def disk_full_reason(err: BaseException, directory: str | Path) -> str | None:
    """'no space left on device' / 'disk quota exceeded' when `err` (or what caused it)
    is a full file system under `directory`; None for any other error."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None)
        if isinstance(e, OSError) and code in _FULL_ERRNOS:
            return os.strerror(code).lower()
        text = str(e)
        for no, needles in _FULL_TEXTS.items():
            if any(n in text for n in needles):
                return os.strerror(no).lower()
        e = e.__cause__ or e.__context__
    if isinstance(err, OSError | RuntimeError) and getattr(err, "errno", None) is None:
        with contextlib.suppress(OSError):
            if free_bytes(directory) < NEARLY_FULL_BYTES:
                return os.strerror(errno.ENOSPC).lower()
    return None


@contextlib.contextmanager
def _disk_full_is_one_line(
    path: Path, cleanup, needed: int | None, needed_is_bound: bool
) -> Iterator[None]:
    """Turn a full disk inside the block into DiskFullError, after `cleanup()` removed
    the partial output (so the free space reported is what a rerun will have)."""
    try:
        yield
    except Exception as err:
        directory = path.parent if path.parent.exists() else Path.cwd()
        reason = disk_full_reason(err, directory)
        if reason is None:
            raise
        cleanup()
        raise DiskFullError(
            path, free_bytes(directory), needed, reason, needed_is_bound=needed_is_bound
        ) from err


@contextlib.contextmanager
def atomic_path(
    path: str | Path, needed: int | None = None, needed_is_bound: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling path that is renamed onto `path` only on success.

    A crash or exception leaves nothing at `path`, so no half-written file ever
    looks complete to Snakemake or to a later step. A full disk raises DiskFullError,
    one line naming `path` and the space it needs (`needed` bytes, an estimate or,
    with `needed_is_bound`, an upper bound) against what is free.
    """
    path = Path(path)
    tmp_path: Path | None = None

    def cleanup() -> None:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()

    try:
        with _disk_full_is_one_line(path, cleanup, needed, needed_is_bound):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            # mkstemp creates 0600 files; give the result the permissions a plain open()
            # would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        cleanup()


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
    # Arrow's in-memory size bounds the (compressed) parquet file from above.
    with atomic_path(path, needed=table.nbytes + (64 << 10), needed_is_bound=True) as tmp:
        pq.write_table(table, tmp)


def write_npy(array: np.ndarray, path: str | Path) -> None:
    """`np.save(path, array)` atomically, byte for byte the same file.

    The data go through Python's own file writes, which report a full disk with its
    errno (numpy's fast path, `tofile`, loses it: "N requested and M written").
    """
    array = np.ascontiguousarray(array)
    header = BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    needed = header.tell() + array.nbytes
    with atomic_path(path, needed=needed) as tmp, open(tmp, "wb") as fh:
        fh.write(header.getvalue())
        fh.write(memoryview(array.reshape(-1)).cast("B"))


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


def table_rows(path: str | Path) -> int:
    """Row count of a parquet table, from its footer (nothing else is read)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path)
    return pq.ParquetFile(path).metadata.num_rows


def read_table_rows(path: str | Path, kind: str | None, start: int, end: int) -> pd.DataFrame:
    """Rows [start, end) of a parquet table, reading only the row groups that hold them:
    an encoding shard of a 21M-passage collection never loads the other shards' text."""
    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path)
    parquet = pq.ParquetFile(path)
    if kind is not None:
        missing = [c for c in SCHEMAS[kind].names if c not in parquet.schema_arrow.names]
        if missing:
            raise InputError(f"not a {kind} table: missing columns {missing}", path)
    pieces, offset = [], 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        lo, hi = max(start - offset, 0), min(end - offset, rows)
        if lo < hi:
            pieces.append(parquet.read_row_group(group).slice(lo, hi - lo))
        offset += rows
        if offset >= end:
            break
    if not pieces:
        return parquet.schema_arrow.empty_table().to_pandas()
    return pa.concat_tables(pieces).to_pandas()


@dataclass
class RowsRead:
    """What `read_rows_with_ids` loaded: ids scanned, rows whose other columns were read,
    rows kept (the memory bound of a selective read is what is kept + one row group)."""

    row_groups: int = 0
    row_groups_read: int = 0
    ids_scanned: int = 0
    rows_read: int = 0
    rows_kept: int = 0


def read_rows_with_ids(
    path: str | Path, ids: Iterable[str], columns: Sequence[str], id_column: str = "doc_id"
) -> tuple[pa.Table, RowsRead]:
    """The rows of parquet `path` whose `id_column` is in `ids`, in file order, as strings.

    Row group by row group: the id column first, the other `columns` only of the row
    groups that hold a wanted id, so a job needing a few passages of a 21M-passage
    collection never holds the others. Ids not found are simply absent (callers check)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    parquet = pq.ParquetFile(path)
    wanted = pa.array(sorted(set(map(str, ids))), type=pa.string())
    schema = pa.schema([(c, pa.string()) for c in columns])
    stats = RowsRead(row_groups=parquet.num_row_groups)
    pieces = []
    for group in range(parquet.num_row_groups):
        found = parquet.read_row_group(group, columns=[id_column]).column(id_column)
        stats.ids_scanned += len(found)
        mask = pc.is_in(found.cast(pa.string()), value_set=wanted)
        if not pc.any(mask).as_py():
            continue
        rows = parquet.read_row_group(group, columns=list(columns))
        stats.row_groups_read += 1
        stats.rows_read += rows.num_rows
        kept = rows.filter(mask)
        del rows
        pieces.append(kept.cast(schema))
        stats.rows_kept += kept.num_rows
    table = pa.concat_tables(pieces) if pieces else schema.empty_table()
    return table, stats


def write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (UTF-8)."""
    data = text.encode("utf-8")
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `path` only if the block succeeds.

    A full disk raises DiskFullError (see atomic_path); the temporary folder is removed.
    """
    path = Path(path)
    tmp: Path | None = None

    def cleanup() -> None:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        with _disk_full_is_one_line(path, cleanup, needed, False):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        cleanup()
