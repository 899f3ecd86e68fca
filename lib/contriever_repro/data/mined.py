"""Mined hard negatives on disk: a parquet table that carries its own provenance.

Phase 2 of MS MARCO fine-tuning (paper A.2) trains on negatives mined with the phase-1
model. The table records, in its parquet schema metadata, which model mined it (a
fingerprint of the weights, see models.fingerprint) and with which settings (depth,
rank range, per-query count, seed, training set), so a phase-2 run can check that its
negatives come from the phase-1 model it names. This module is in the data stage so
the training stage can read the table.

Columns: query_id, doc_id, rank (retrieval rank among all hits, 1-based), score,
positive_score (best score of a judged positive within the mining depth, NaN if none).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..io import atomic_path

MINED_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
        ("positive_score", pa.float32()),
    ]
)
METADATA_KEY = b"contriever_repro.mining"


def write_mined(df: pd.DataFrame, path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Write the mined table atomically, `metadata` (JSON-able) in the schema metadata."""
    missing = [c for c in MINED_SCHEMA.names if c not in df.columns]
    if missing:
        raise ValueError(f"mined table is missing columns {missing}")
    table = pa.Table.from_pandas(df[MINED_SCHEMA.names], schema=MINED_SCHEMA, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(dict(metadata), sort_keys=True).encode("utf-8")
    table = table.replace_schema_metadata(meta)
    with atomic_path(path, needed=table.nbytes + (64 << 10), needed_is_bound=True) as tmp:
        pq.write_table(table, tmp)


def read_mined(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(table, provenance) of a mined-negatives parquet written by write_mined."""
    path = Path(path)
    if not path.is_file():
        raise InputError("mined negatives file does not exist", path)
    table = pq.read_table(path)
    missing = [c for c in MINED_SCHEMA.names if c not in table.column_names]
    if missing:
        raise InputError(f"not a mined negatives table: missing columns {missing}", path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(
            "mined negatives table has no mining provenance (not written by mine_negatives)",
            path,
        )
    return table.to_pandas(), json.loads(raw.decode("utf-8"))
