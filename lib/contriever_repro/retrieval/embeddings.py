"""Embedding files: `<prefix>.npy` (float32), `<prefix>.ids.parquet`, `<prefix>.json`.

Kept apart from encode.py so that the jobs that only read embeddings (search, mining's
search) do not import torch: seconds of start-up per job, hundreds of jobs per table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import write_npy, write_table, write_text


def save_embeddings(
    prefix: str | Path, ids: Sequence[str], emb: np.ndarray, meta: dict
) -> tuple[Path, Path, Path]:
    """Write `<prefix>.npy`, `<prefix>.ids.parquet` and `<prefix>.json` (model settings)."""
    prefix = Path(prefix)
    if len(ids) != emb.shape[0]:
        raise ValueError(f"{len(ids)} ids for {emb.shape[0]} embeddings")
    npy = prefix.with_name(prefix.name + ".npy")
    ids_path = prefix.with_name(prefix.name + ".ids.parquet")
    meta_path = prefix.with_name(prefix.name + ".json")
    write_npy(emb.astype(np.float32, copy=False), npy)
    write_table(pd.DataFrame({"id": pd.Series(list(ids), dtype="string")}), ids_path)
    meta = {**meta, "count": int(emb.shape[0]), "dim": int(emb.shape[1])}
    write_text(json.dumps(meta, indent=2, sort_keys=True), meta_path)
    return npy, ids_path, meta_path


def load_embeddings(prefix: str | Path, mmap: bool = True) -> tuple[list[str], np.ndarray, dict]:
    prefix = Path(prefix)
    npy = prefix.with_name(prefix.name + ".npy")
    ids_path = prefix.with_name(prefix.name + ".ids.parquet")
    meta_path = prefix.with_name(prefix.name + ".json")
    for p in (npy, ids_path, meta_path):
        if not p.exists():
            raise InputError("embedding shard file is missing", p)
    emb = np.load(npy, mmap_mode="r" if mmap else None)
    ids = pd.read_parquet(ids_path)["id"].astype(str).tolist()
    meta = json.loads(meta_path.read_text())
    if len(ids) != emb.shape[0]:
        raise InputError(f"{len(ids)} ids but {emb.shape[0]} embeddings", ids_path)
    return ids, emb, meta


def embedding_meta(spec, side: str) -> dict:
    """What must match between query and passage embeddings for a search to make sense."""
    return {
        "model": spec.name,
        "source": spec.source,
        "side": side,
        "pooling": spec.pooling,
        "l2_normalize": spec.l2_normalize,
        "score_function": spec.score_function,
        "max_length": spec.max_query_length if side == "query" else spec.max_passage_length,
        "lowercase": spec.lowercase,
        "normalize_text": spec.normalize_text,
        "dtype": spec.dtype_for(side),
    }
