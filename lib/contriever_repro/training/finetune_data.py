"""Fine-tuning inputs beyond one data set's tables: several data sets at once and a
passage pool read down to what the training set names (FinetuneConfig.passage_pool).

Several data sets (the multilingual recipe, paper B.2: Mr. TyDi's 11 training sets)
become one training set whose query and doc ids are namespaced `<data set>/<id>`:
Wikipedia ids such as `15607#5` repeat across languages, and a namespaced id can only
match its own data set's passage, so positives and hard negatives never cross.

`read_passages` reads the passages of a corpus parquet whose doc_id is in a given set,
one row group at a time: the doc_id column first, then the other columns of only the
row groups that hold a wanted id, filtered at once. What is held is what is kept plus
at most one row group, never the collection (32.9M English Mr. TyDi passages).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..io import RowsRead, read_rows_with_ids

log = logging.getLogger(__name__)

PathLike = str | Path
SEPARATOR = "/"


def per_dataset(
    value: PathLike | Sequence[PathLike | None] | None, what: str, names: Sequence[str], where: str
) -> list[PathLike | None]:
    """One path (or None) per data set, in `names` order: a single path stands for the
    only data set; a sequence must have one entry per data set."""
    if value is None:
        return [None] * len(names)
    if isinstance(value, str | Path):
        value = [value]
    value = list(value)
    if len(value) != len(names):
        raise InputError(
            f"{where}: {len(value)} {what} path(s) given for {len(names)} data set(s) "
            f"{list(names)}; give one per data set, in that order"
        )
    return value


def referenced_ids(records: pd.DataFrame, mined: pd.DataFrame | None) -> np.ndarray:
    """Sorted unique doc ids the records (positives, negatives) and, for the records'
    queries, the mined negatives name."""
    parts = [
        np.fromiter((str(x) for x in itertools.chain.from_iterable(records[column])), dtype=object)
        for column in ("positive_ids", "negative_ids")
    ]
    if mined is not None:
        own = mined["query_id"].astype(str).isin(records["query_id"].astype(str))
        parts.append(mined.loc[own, "doc_id"].astype(str).to_numpy(dtype=object))
    return np.unique(np.concatenate(parts).astype(str)).astype(object)


def named_negatives(records: pd.DataFrame, mined: pd.DataFrame | None) -> int:
    """How many (query, negative) pairs the records or, for the records' queries, the
    mined table name."""
    count = int(records["negative_ids"].map(len).sum())
    if mined is not None:
        count += int(mined["query_id"].astype(str).isin(records["query_id"].astype(str)).sum())
    return count


# What read_passages loaded (io.read_rows_with_ids's counts).
PassageRead = RowsRead


def read_passages(path: PathLike, doc_ids: Iterable[str]) -> tuple[pd.DataFrame, PassageRead]:
    """The rows of corpus parquet `path` whose doc_id is in `doc_ids`, in file order;
    every id must be found once. See the module docstring for the memory bound."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    names = pq.ParquetFile(path).schema_arrow.names
    missing = [c for c in ("doc_id", "text") if c not in names]
    if missing:
        raise InputError(f"not a corpus table: missing columns {missing}", path)
    columns = [c for c in ("doc_id", "title", "text") if c in names]
    wanted = pa.array(sorted(set(map(str, doc_ids))), type=pa.string())
    table, stats = read_rows_with_ids(path, wanted.to_pylist(), columns)
    found = table.column("doc_id")
    if len(pc.unique(found)) < len(wanted):
        absent = pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=found)))
        raise InputError(
            f"{len(absent)} doc id(s) the training data names are not in the corpus: "
            f"first {absent[:5].to_pylist()}",
            path,
        )
    if stats.rows_kept > len(wanted):
        dup = pd.Index(found.to_pylist())
        raise InputError(f"corpus table has duplicate id {dup[dup.duplicated()][0]!r}", path)
    return table.to_pandas(), stats


def namespace(
    name: str,
    queries: pd.DataFrame,
    corpus: pd.DataFrame,
    records: pd.DataFrame,
    mined: pd.DataFrame | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The four tables with every query and doc id prefixed `<name>/`; queries that no
    record uses are dropped (they would only take memory)."""
    prefix = name + SEPARATOR

    def ids(column: pd.Series) -> pd.Series:
        return prefix + column.astype(str)

    def id_lists(column: pd.Series) -> list[list[str]]:
        return [[prefix + str(x) for x in items] for items in column]

    used = queries["query_id"].astype(str).isin(records["query_id"].astype(str))
    queries = queries[used].assign(query_id=lambda df: ids(df["query_id"]))
    corpus = corpus.assign(doc_id=ids(corpus["doc_id"]))
    records = records.assign(
        query_id=ids(records["query_id"]),
        positive_ids=id_lists(records["positive_ids"]),
        negative_ids=id_lists(records["negative_ids"]),
    )
    if mined is not None:
        mined = mined.assign(query_id=ids(mined["query_id"]), doc_id=ids(mined["doc_id"]))
    return queries, corpus, records, mined
