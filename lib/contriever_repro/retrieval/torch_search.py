"""Exact inner-product top-k in plain PyTorch: the GPU search for users whose FAISS has
no GPU build for their CUDA (search.exact_search(backend="torch")).

Documents are read in chunks (from a memory-mapped array, one copy to the device per
chunk), queries in chunks so that one block of scores is at most
query_chunk x doc_chunk floats, and each query keeps a running top-k merged across
document chunks. Results are FAISS IndexFlatIP's: fp32 scores, int64 row indices,
best first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

# 262144 x 768 fp32 documents are 0.8 GB on the device; 4096 x 262144 scores 4.3 GB.
DOC_CHUNK = 262_144
QUERY_CHUNK = 4096


@contextmanager
def exact_fp32() -> Iterator[None]:
    """Strict fp32 matmuls (no TF32, no reduced-precision CPU kernels) inside the block,
    the caller's settings restored after.

    TF32 keeps a 10-bit mantissa: inner products of 768-d embeddings move by ~1e-3,
    enough to reorder close documents, so the run would no longer be FAISS's.
    """
    precision = torch.get_float32_matmul_precision()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _to_device(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    block = np.ascontiguousarray(rows, dtype=np.float32)
    if not block.flags.writeable:  # a memory-mapped shard: torch wants its own buffer
        block = block.copy()
    return torch.from_numpy(block).to(device)


def _block_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best columns of each row (all when there are fewer), unordered.

    Where the k-th and (k+1)-th scores tie, torch.topk may pick any of the tied
    columns; those rows take the lowest column indices instead, so which of exactly
    tied documents (duplicate passages) makes the cut is defined, not left to topk.
    """
    rows, cols = scores.shape
    if cols <= k:
        idx = torch.arange(cols, device=scores.device).expand(rows, cols)
        return scores, idx
    vals, idx = torch.topk(scores, k + 1, dim=1)
    tied = vals[:, k] == vals[:, k - 1]
    vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
    if bool(tied.any()):
        for r in torch.nonzero(tied).flatten().tolist():
            row, kth = scores[r], vals[r, k - 1]
            above = torch.nonzero(row > kth).flatten()
            at = torch.nonzero(row == kth).flatten()[: k - above.numel()]
            idx[r] = torch.cat([above, at])
            vals[r] = row[idx[r]]
    return vals, idx


def _best(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k by (score desc, index asc): sort by index, then stably by score."""
    idx, order = torch.sort(idx, dim=1)
    vals = vals.gather(1, order)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals[:, :k], idx.gather(1, order)[:, :k]


def torch_topk(
    doc_emb: np.ndarray,
    query_emb: np.ndarray,
    k: int,
    device: str = "cpu",
    doc_chunk: int = DOC_CHUNK,
    query_chunk: int = QUERY_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k documents per query by inner product, as FAISS IndexFlatIP.search:
    (scores float32 [nq, k], row indices int64 [nq, k]), best first; equal scores by
    lower row index. k must be at most the number of documents.

    Scores are strict fp32 (see exact_fp32), so they equal FAISS CPU's up to fp32
    summation order (~1e-6 relative).
    """
    n, dim = doc_emb.shape
    if query_emb.ndim != 2 or query_emb.shape[1] != dim:
        raise ValueError(f"queries of shape {query_emb.shape} for documents of dim {dim}")
    nq = query_emb.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be between 1 and the {n} documents")
    if doc_chunk <= 0 or query_chunk <= 0:
        raise ValueError(f"chunk sizes must be positive: doc {doc_chunk}, query {query_chunk}")
    if nq == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    dev = torch.device(device)
    with exact_fp32(), torch.inference_mode():
        queries = _to_device(query_emb, dev)
        q_starts = range(0, nq, query_chunk)
        best = [
            (
                torch.empty((min(query_chunk, nq - s), 0), device=dev),
                torch.empty((min(query_chunk, nq - s), 0), dtype=torch.int64, device=dev),
            )
            for s in q_starts
        ]
        for d0 in range(0, n, doc_chunk):
            docs = _to_device(doc_emb[d0 : d0 + doc_chunk], dev)
            for c, q0 in enumerate(q_starts):
                vals, idx = _block_top(queries[q0 : q0 + query_chunk] @ docs.T, k)
                run_vals, run_idx = best[c]
                best[c] = _best(
                    torch.cat([run_vals, vals], dim=1), torch.cat([run_idx, idx + d0], dim=1), k
                )
            del docs
        scores = torch.cat([v for v, _ in best]).cpu().numpy()
        indices = torch.cat([i for _, i in best]).cpu().numpy()
    return scores.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)
