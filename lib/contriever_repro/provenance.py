"""What every result row records: the config hash, the code version, input checksums."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .plan import code_version


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(config_hash: str, inputs: dict[str, str | Path], repo: str | Path = ".") -> dict:
    """Columns appended to metric rows so any number traces back to what produced it."""
    return {
        "config_hash": config_hash,
        "code_version": code_version(repo),
        **{f"{name}_sha256": sha256_file(path)[:16] for name, path in inputs.items()},
    }


METRIC_FRONT = ["model", "dataset", "unit", "split", "metric", "value", "n_queries"]


def metrics_rows(table, ident: dict, run: str, prov: dict):
    """A metrics table (metric, value, n_queries) in the workflow's long form: the
    identity columns and the run and provenance behind every number, identity first."""
    table = table.assign(**ident, run=run, **prov)
    return table[METRIC_FRONT + [c for c in table.columns if c not in METRIC_FRONT]]
