"""Exact inner-product search over embedding shards, and run files.

Each corpus shard is searched on its own, by one of two backends: FAISS (an
`IndexFlatIP`, on GPU when FAISS has GPU support and one is visible) or plain PyTorch
(torch_search.torch_topk, for a GPU without a faiss-gpu build for its CUDA). Per-shard
top-k lists are merged, so the whole corpus never has to sit in one index. Hits whose
doc id equals the query id are dropped, as the `beir` package does during retrieval
(this matters for ArguAna, Quora and CQADupStack).

Neither faiss nor torch is imported until a search needs it: search jobs start fast,
and each backend works where the other is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import RUN_SCHEMA, write_table, write_text
from ..progress import Progress
from .embeddings import load_embeddings

log = logging.getLogger(__name__)


BACKENDS = ("faiss", "torch")


def faiss_gpu_available() -> bool:
    """True when FAISS is installed, has GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def gpu_visible(backend: str) -> bool:
    """Whether `backend` can search on a GPU here: FAISS's GPU build sees one, or torch
    sees CUDA (choose_device's `cuda_available` for a search job)."""
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return faiss_gpu_available()


def _faiss_block_search(use_gpu: bool) -> Callable:
    """search(doc_emb, query_emb, k) -> (scores, indices) with one IndexFlatIP per block."""
    import faiss

    gpu_res = faiss.StandardGpuResources() if use_gpu and faiss_gpu_available() else None

    def search(doc_emb: np.ndarray, query_emb: np.ndarray, k: int) -> tuple:
        index = faiss.IndexFlatIP(doc_emb.shape[1])
        if gpu_res is not None:
            index = faiss.index_cpu_to_gpu(gpu_res, 0, index)
        index.add(np.ascontiguousarray(doc_emb, dtype=np.float32))
        return index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)

    return search


def _torch_block_search(use_gpu: bool, device: str | None) -> Callable:
    """search(doc_emb, query_emb, k) with torch_topk on `device` (default: CUDA when
    use_gpu and torch sees it, else CPU)."""
    import torch

    from .torch_search import torch_topk

    if device is None:
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    log.info("exact search with PyTorch on %s", device)

    def search(doc_emb: np.ndarray, query_emb: np.ndarray, k: int) -> tuple:
        return torch_topk(doc_emb, query_emb, k, device=device)

    return search


def exact_search(
    query_ids: Sequence[str],
    query_emb: np.ndarray,
    shards: Iterable[tuple[Sequence[str], np.ndarray]],
    top_k: int = 1000,
    drop_identical_ids: bool = True,
    use_gpu: bool = True,
    backend: str = "faiss",
    device: str | None = None,
) -> pd.DataFrame:
    """Top-k documents per query by inner product, over all shards.

    Returns a run table (query_id, doc_id, rank, score) sorted by query then rank;
    rank starts at 1. Ties are broken by doc id so runs are reproducible.
    backend: "faiss" or "torch" (same run, scores within fp32 rounding); only the
    per-shard search differs. device: where to search ("cuda", "cpu"; the torch backend
    also "cuda:1"); default: a GPU when use_gpu and the backend sees one.
    """
    if query_emb.shape[0] != len(query_ids):
        raise ValueError(f"{len(query_ids)} query ids for {query_emb.shape[0]} embeddings")
    if backend == "faiss":
        search_block = _faiss_block_search(use_gpu if device is None else device != "cpu")
    elif backend == "torch":
        search_block = _torch_block_search(use_gpu, device)
    else:
        raise InputError(f"search backend must be one of {BACKENDS}, got {backend!r}")
    k_fetch = top_k + 1 if drop_identical_ids else top_k
    nq = len(query_ids)
    best_scores = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_docs = np.empty((nq, 0), dtype=object)
    dim = query_emb.shape[1]
    for shard_ids, shard_emb in shards:
        if shard_emb.shape[1] != dim:
            raise InputError(
                f"embedding dimension mismatch: queries {dim}, corpus shard {shard_emb.shape[1]}"
            )
        if shard_emb.shape[0] == 0:
            continue
        k = min(k_fetch, shard_emb.shape[0])
        scores, idx = search_block(shard_emb, query_emb, k)
        ids_arr = np.asarray(shard_ids, dtype=object)
        docs = ids_arr[idx]
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_docs = np.concatenate([best_docs, docs], axis=1)
        if best_scores.shape[1] > k_fetch:
            keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k_fetch]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_docs = np.take_along_axis(best_docs, keep, axis=1)
    rows_q, rows_d, rows_s = [], [], []
    for qi, qid in enumerate(query_ids):
        for doc, score in zip(best_docs[qi], best_scores[qi], strict=True):
            if drop_identical_ids and doc == qid:
                continue
            rows_q.append(qid)
            rows_d.append(doc)
            rows_s.append(score)
    run = pd.DataFrame(
        {"query_id": rows_q, "doc_id": rows_d, "score": np.asarray(rows_s, dtype=np.float32)}
    )
    return rank_run(run, top_k)


# Settings that must agree between query and corpus embeddings for scores to mean anything.
MUST_MATCH = ("model", "pooling", "l2_normalize", "score_function")


def check_same_model(
    meta: Mapping, reference: Mapping, subject: str, other: str, where, fix: str
) -> None:
    """Embeddings searched or indexed together must come from one model's settings
    (MUST_MATCH); the first that differs is an InputError naming `where`:
    "<subject> <key>=<value> but <other> <value>; <fix>"."""
    for key in MUST_MATCH:
        if meta.get(key) != reference.get(key):
            raise InputError(
                f"{subject} {key}={meta.get(key)!r} but {other} {reference.get(key)!r}; {fix}",
                where,
            )


def load_shards(
    prefixes: Sequence[str], query_meta: dict
) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, embeddings) of each corpus shard, memory-mapped, for exact_search; a shard
    encoded with other model settings than the queries is an InputError naming it."""
    progress = Progress(len(prefixes), "search", log, interval=0.0, unit="shards")
    for prefix in prefixes:
        ids, emb, meta = load_embeddings(prefix)
        fix = "re-encode with one model spec"
        check_same_model(meta, query_meta, "corpus shard has", "queries have", prefix, fix)
        log.info("searching shard %s (%d docs)", prefix, len(ids))
        yield ids, emb
        progress.update(1)


def rank_run(run: pd.DataFrame, top_k: int | None = None) -> pd.DataFrame:
    """Sort by (query, score desc, doc id), keep top_k per query and number ranks from 1."""
    run = run.sort_values(
        ["query_id", "score", "doc_id"], ascending=[True, False, True], kind="stable"
    )
    run["rank"] = run.groupby("query_id", sort=False).cumcount() + 1
    if top_k is not None:
        run = run[run["rank"] <= top_k]
    run = run.astype({"query_id": str, "doc_id": str, "rank": "int32", "score": "float32"})
    return run[RUN_SCHEMA.names].reset_index(drop=True)


def drop_identical(run: pd.DataFrame) -> pd.DataFrame:
    """Remove hits whose doc id equals the query id, then re-rank."""
    kept = run[run["query_id"] != run["doc_id"]].copy()
    return rank_run(kept)


def to_trec(run: pd.DataFrame, tag: str) -> str:
    """TREC run format: `qid Q0 docid rank score tag`, one hit per line."""
    lines = [
        f"{q} Q0 {d} {r} {s:.6f} {tag}"
        for q, d, r, s in zip(
            run["query_id"], run["doc_id"], run["rank"], run["score"], strict=True
        )
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def write_trec(run: pd.DataFrame, path: str | Path, tag: str) -> None:
    write_text(to_trec(run, tag), path)


def add_run_args(ap) -> None:
    """Arguments shared by every script that writes a run (dense search, BM25)."""
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--drop-identical-ids", dest="drop", action="store_true", default=True)
    ap.add_argument("--keep-identical-ids", dest="drop", action="store_false")
    ap.add_argument("--tag", default="run", help="run name in the TREC file")
    ap.add_argument("--run", required=True, help="run parquet to write")
    ap.add_argument("--trec", required=True, help="TREC run file to write")
    ap.add_argument("--threads", type=int, default=None)


def write_run(run, run_path: str, trec_path: str, tag: str) -> None:
    """Save a run as parquet (the workflow's format) and as a TREC run file."""
    logging.getLogger(__name__).info(
        "run: %d queries, %d hits", run["query_id"].nunique(), len(run)
    )
    write_table(run, run_path, "run")
    write_trec(run, trec_path, tag)
