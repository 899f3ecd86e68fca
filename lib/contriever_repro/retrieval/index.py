"""Approximate FAISS indexes over embedding shards, for corpora too big to search flat.

DPR's 21,015,324 Wikipedia passages as 768-d float32 are 64.6 GB. Exact search
(search.exact_search) holds one shard at a time, but reads all 64.6 GB in every search
job and scans every vector for every query. An index built here holds compressed codes
instead: `<prefix>.faiss` (the FAISS index), `<prefix>.ids.parquet` (row -> passage id)
and `<prefix>.json` (how it was built, the embedding settings of the passages it holds,
its default search parameters).

Any `faiss.index_factory` string works ("IVF4096,PQ64", "IVF1024,Flat", "HNSW32,Flat",
"OPQ64,IVF65536,PQ64", ...). The default (DEFAULT_FACTORY, DEFAULT_SEARCH_PARAMS,
DEFAULT_RERANK_DEPTH; `default_settings` scales it to other corpus sizes) is
"IVF16384,PQ384x4fs", every list probed, and the best 1,000 candidates re-scored
exactly from the embedding shards (memory-mapped: only their rows are read):

* memory: 384 4-bit codes = 192 bytes per passage plus its 8-byte id, against 3,072
  bytes in float32: 15x less, 4.2 GB for 21M passages (+ 50 MB of centroids). The
  re-scoring reads `depth` rows of 3 KB per query from the shards.
* accuracy, measured on synthetic 768-d embeddings made to behave like real ones (see
  bench/bench_openqa.py: the generator matches all-MiniLM-L6-v2 embeddings of MS MARCO
  passages in IVF and PQ recall): at 50k passages the exact top 100 lay within the
  index's best 1,000 for every query, so Recall@100 against exact was 1.000 after
  re-scoring (0.973 re-scoring 300); the codes' own scores keep 0.72 of the exact top
  100. At half the bytes (PQ192x4fs, or 8-bit PQ96, whose k-means takes 40x longer)
  the best 1,000 hold only 0.95-0.96 of it.
* why every list is probed: on the same data, and on the real MiniLM embeddings,
  probing a quarter of the lists finds only 0.83-0.93 of the exact top 100, so list
  pruning cannot hold Recall@100 >= 0.99. Scanning fast-scan 4-bit codes is cheap
  (SIMD table lookups: 0.6 ms per query for 50k passages on one core here, 20x less
  than an IVF-Flat scan of the same lists); `nprobe` trades recall for speed where that
  is wanted. The IVF part still pays: codes of residuals to 16,384 centroids
  (~4 x sqrt(21M)) are more accurate than codes of the raw vectors.

"Recall@100 within 1 point of exact" in the paper's open-domain sense (the share of
questions with an answer passage in the top 100) is much looser than the set overlap
`recall_against_exact` measures; bench/bench_openqa.py reports both (at 20k synthetic
passages the codes alone, without re-scoring, kept 0.75 of the exact top 100 but lost
only 1 point of its stand-in for answer recall).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_path, write_table, write_text
from ..progress import Progress
from .search import check_same_model, faiss_gpu_available, rank_run

log = logging.getLogger(__name__)

# Settings for DPR's 21M Wikipedia passages (768-d); see the module docstring.
DEFAULT_FACTORY = "IVF16384,PQ384x4fs"
DEFAULT_SEARCH_PARAMS = {"nprobe": 16384}
# Candidates per query re-scored exactly from the embedding shards (when given).
DEFAULT_RERANK_DEPTH = 1000
# Rows added to the index per call (the reference adds blocks of 1M as well).
ADD_BLOCK = 1_000_000
# Bytes of candidate vectors held at once while re-scoring.
RERANK_BUFFER_BYTES = 256 << 20
# Queries per faiss search call, so progress can be logged.
SEARCH_BATCH = 4096


def default_settings(n_vectors: int, dim: int) -> tuple[str, dict]:
    """DEFAULT_FACTORY and DEFAULT_SEARCH_PARAMS scaled to a corpus of `n_vectors`:
    nlist is the power of two nearest 4 x sqrt(n) (16384 for 21M; at most n / 39, the
    fewest points per centroid FAISS's k-means accepts without warning), `dim / 2`
    4-bit sub-quantizers (two dimensions each), and every list probed."""
    if n_vectors <= 0 or dim <= 0:
        raise ValueError(f"need a non-empty corpus, got {n_vectors} x {dim}")
    target = 4 * math.sqrt(n_vectors)
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and nlist * 39 > n_vectors:
        nlist //= 2
    m = dim // 2 if dim % 2 == 0 else dim
    return f"IVF{nlist},PQ{m}x4fs", {"nprobe": nlist}


def training_rows(sizes: Sequence[int], train_size: int, seed: int) -> list[np.ndarray]:
    """Sorted row indices, per shard, of a seeded uniform sample of `train_size` rows out
    of all shards together (every row when there are no more than that)."""
    total = int(sum(sizes))
    if train_size >= total:
        picked = np.arange(total, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(total, size=train_size, replace=False))
    bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    cuts = np.searchsorted(picked, bounds)
    return [picked[cuts[i] : cuts[i + 1]] - bounds[i] for i in range(len(sizes))]


def make_index(dim: int, factory: str) -> faiss.Index:
    """`faiss.index_factory` for inner product; a string FAISS cannot parse is an
    InputError naming it."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InputError(
            f"FAISS cannot build index {factory!r} for {dim}-d vectors: {_faiss_message(err)}",
        ) from err


def _faiss_message(err: Exception) -> str:
    """The last line of a FAISS error (the rest is its C++ source location)."""
    lines = str(err).strip().splitlines()
    return re.split(r"\.(?:cpp|h|cu):\d+: ", lines[-1])[-1] if lines else repr(err)


def _train_on_gpu(index: faiss.Index) -> tuple | None:
    """Let an IVF index run its k-means on the GPU (the costly part of training);
    returns what must stay alive while it trains (the IVF index does not own its
    clustering index), or None when training stays on CPU."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not faiss_gpu_available():
        return None
    res = faiss.StandardGpuResources()
    gpu_flat = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlat(ivf.d, ivf.metric_type))
    ivf.clustering_index = gpu_flat
    return res, gpu_flat


def build_index(
    shards: Iterable[tuple[Sequence[str], np.ndarray]],
    factory: str,
    train_size: int = 1_000_000,
    seed: int = 0,
    use_gpu: bool = True,
    names: Sequence[str] | None = None,
    block_size: int = ADD_BLOCK,
    stats: dict | None = None,
) -> tuple[faiss.Index, list[str]]:
    """Train `factory` (inner product) on a uniform sample of the shards, add them all.

    shards: (ids, embeddings) pairs, typically memory-mapped .npy (search.load_shards or
    embeddings.load_embeddings); the sample is read row by row, so no shard is loaded
    whole. names: what to call each shard in errors (its prefix). Returns the index and
    the passage id of each of its rows; `stats`, when given, receives the training and
    adding times (train_s, add_s) and the training sample size (train_vectors).
    IVF k-means runs on the GPU when FAISS can use one; other training (PQ, OPQ, HNSW's
    graph) stays on CPU.
    """
    shards = list(shards)
    if not shards:
        raise InputError("no embedding shards to index")
    names = list(names) if names is not None else [f"shard {i}" for i in range(len(shards))]
    dim = int(shards[0][1].shape[1])
    for (shard_ids, emb), name in zip(shards, names, strict=True):
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise InputError(
                f"embedding dimension {emb.shape[1:]} differs from the first shard's {dim}",
                name,
            )
        if len(shard_ids) != emb.shape[0]:
            raise InputError(f"{len(shard_ids)} ids for {emb.shape[0]} embeddings", name)
    index = make_index(dim, factory)
    sizes = [int(emb.shape[0]) for _ids, emb in shards]
    total = sum(sizes)
    if total == 0:
        raise InputError("the embedding shards hold no vectors", names[0])
    stats = stats if stats is not None else {}
    stats.update(train_s=0.0, train_vectors=0)
    start = time.perf_counter()
    if not index.is_trained:
        rows = training_rows(sizes, train_size, seed)
        sample = np.empty((sum(len(r) for r in rows), dim), dtype=np.float32)
        filled = 0
        for (_ids, emb), r in zip(shards, rows, strict=True):
            sample[filled : filled + len(r)] = emb[r]
            filled += len(r)
        on_gpu = _train_on_gpu(index) if use_gpu else None
        log.info(
            "training %s on %d of %d vectors (%s)",
            factory,
            len(sample),
            total,
            "k-means on GPU" if on_gpu is not None else "CPU",
        )
        try:
            index.train(sample)
        except RuntimeError as err:
            raise InputError(f"FAISS cannot train {factory!r}: {_faiss_message(err)}") from err
        stats["train_vectors"] = len(sample)
        del sample
        ivf = faiss.try_extract_index_ivf(index)
        if on_gpu is not None:
            ivf.clustering_index = None  # before the GPU copy it points to is freed
        del on_gpu
        stats["train_s"] = time.perf_counter() - start
        log.info("trained in %.1f s", stats["train_s"])
    start = time.perf_counter()
    progress = Progress(total, f"index {factory}", log, unit="vectors")
    ids: list[str] = []
    for shard_ids, emb in shards:
        for row in range(0, emb.shape[0], block_size):
            block = np.ascontiguousarray(emb[row : row + block_size], dtype=np.float32)
            index.add(block)
            progress.update(len(block))
        ids.extend(str(i) for i in shard_ids)
    stats["add_s"] = time.perf_counter() - start
    return index, ids


def _paths(prefix: str | Path) -> tuple[Path, Path, Path]:
    prefix = Path(prefix)
    return (
        prefix.with_name(prefix.name + ".faiss"),
        prefix.with_name(prefix.name + ".ids.parquet"),
        prefix.with_name(prefix.name + ".json"),
    )


def save_index(
    index: faiss.Index,
    ids: Sequence[str],
    prefix: str | Path,
    *,
    factory: str,
    train_size: int,
    seed: int,
    embedding_meta: Mapping | None = None,
    search_params: Mapping | None = None,
    shards: Sequence[Mapping] | None = None,
) -> tuple[Path, Path, Path]:
    """Write `<prefix>.faiss`, `<prefix>.ids.parquet` and `<prefix>.json`, each atomically.

    embedding_meta: the shards' embedding settings (model, pooling, ...), checked against
    the queries' at search time; search_params: used when a search names none;
    shards: [{name, count}] of the shards, in row order, for re-scoring."""
    if len(ids) != index.ntotal:
        raise ValueError(f"{len(ids)} ids for an index of {index.ntotal} vectors")
    index_path, ids_path, meta_path = _paths(prefix)
    with atomic_path(index_path) as tmp:
        faiss.write_index(index, str(tmp))
    write_table(pd.DataFrame({"id": pd.Series(list(ids), dtype="string")}), ids_path)
    meta = {
        "factory": factory,
        "train_size": int(train_size),
        "seed": int(seed),
        "ntotal": int(index.ntotal),
        "dim": int(index.d),
        "metric": "inner_product",
        "search_params": dict(search_params or {}),
        "embedding": {k: v for k, v in dict(embedding_meta or {}).items() if k != "count"},
        "shards": [dict(s) for s in shards or []],
        "faiss_version": faiss.__version__,
    }
    write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", meta_path)
    return index_path, ids_path, meta_path


def load_index(prefix: str | Path) -> tuple[faiss.Index, list[str], dict]:
    """(index, row ids, meta) written by save_index; a missing or inconsistent file is
    an InputError naming it."""
    index_path, ids_path, meta_path = _paths(prefix)
    for p in (index_path, ids_path, meta_path):
        if not p.exists():
            raise InputError("index file is missing", p)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"not JSON: {err}", meta_path) from err
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as err:
        raise InputError(f"FAISS cannot read it: {_faiss_message(err)}", index_path) from err
    ids = pd.read_parquet(ids_path)["id"].astype(str).tolist()
    if len(ids) != index.ntotal:
        raise InputError(f"{len(ids)} ids for an index of {index.ntotal} vectors", ids_path)
    if meta.get("ntotal") not in (None, index.ntotal):
        raise InputError(
            f"says ntotal={meta['ntotal']} but the index holds {index.ntotal}", meta_path
        )
    return index, ids, meta


def check_query_meta(index_meta: Mapping, query_meta: Mapping, where: str | Path) -> None:
    """The index's passages must have been encoded with the queries' model settings."""
    check_same_model(
        index_meta.get("embedding", {}), query_meta, "index holds passages with",
        "queries have", where, "re-encode or rebuild with one model spec",
    )  # fmt: skip


def parse_search_params(items: Sequence[str]) -> dict:
    """`key=value` strings (a CLI's repeated --search-param) as a dict of numbers."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not key or number is None:
            raise InputError(f"search parameter {item!r} is not key=number")
        params[key.strip()] = int(number) if number.is_integer() else number
    return params


def set_search_params(index: faiss.Index, params: Mapping | None, gpu: bool = False) -> None:
    """Set FAISS search-time parameters ({"nprobe": 64}, {"efSearch": 128}, ...); one the
    index does not have is an InputError naming it."""
    if not params:
        return
    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    for key, value in params.items():
        try:
            space.set_index_parameter(index, str(key), float(value))
        except RuntimeError as err:
            raise InputError(
                f"search parameter {key!r} does not apply to a {type(index).__name__} index "
                f"({_faiss_message(err)})"
            ) from err


def _gpu_copy(index: faiss.Index):
    """(resources, GPU copy) of the index, or None when FAISS cannot put it on a GPU
    (no GPU, or an index type without a GPU version: HNSW, fast-scan PQ)."""
    if not faiss_gpu_available():
        return None
    try:
        res = faiss.StandardGpuResources()
        opts = faiss.GpuClonerOptions()
        opts.useFloat16 = True
        return res, faiss.index_cpu_to_gpu(res, 0, index, opts)
    except RuntimeError as err:
        log.info("searching on CPU: no GPU version of this index (%s)", _faiss_message(err))
        return None


def _faiss_search(index, query_emb: np.ndarray, depth: int, params, use_gpu: bool):
    gpu = _gpu_copy(index) if use_gpu else None
    target = gpu[1] if gpu is not None else index
    set_search_params(target, params, gpu=gpu is not None)
    nq = query_emb.shape[0]
    scores = np.empty((nq, depth), dtype=np.float32)
    rows = np.empty((nq, depth), dtype=np.int64)
    progress = Progress(nq, "index search", log, unit="queries")
    for start in range(0, nq, SEARCH_BATCH):
        q = np.ascontiguousarray(query_emb[start : start + SEARCH_BATCH], dtype=np.float32)
        s, r = target.search(q, depth)
        scores[start : start + len(q)] = s
        rows[start : start + len(q)] = r
        progress.update(len(q))
    return scores, rows


def rescore(
    rows: np.ndarray,
    query_emb: np.ndarray,
    shards: Sequence[tuple[Sequence[str], np.ndarray]],
) -> np.ndarray:
    """Exact inner products of each query with its candidate rows (-1: no candidate, -inf
    score), read from the shards the index was built from (in its row order).

    The candidates of a group of queries are read in row order, shard by shard, so a
    memory-mapped shard is read in one forward sweep per group.
    """
    sizes = [int(emb.shape[0]) for _ids, emb in shards]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    nq, depth = rows.shape
    dim = query_emb.shape[1]
    out = np.full((nq, depth), -np.inf, dtype=np.float32)
    per_group = max(1, RERANK_BUFFER_BYTES // max(1, depth * dim * 4))
    for start in range(0, nq, per_group):
        r = rows[start : start + per_group]
        valid = r >= 0
        wanted, inverse = np.unique(r[valid], return_inverse=True)
        vecs = np.empty((len(wanted), dim), dtype=np.float32)
        which = np.searchsorted(offsets, wanted, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            vecs[sel] = shards[s][1][wanted[sel] - offsets[s]]
        cand = np.zeros(r.shape + (dim,), dtype=np.float32)
        cand[valid] = vecs[inverse]
        q = np.asarray(query_emb[start : start + per_group], dtype=np.float32)
        scores = np.einsum("qkd,qd->qk", cand, q)
        out[start : start + per_group] = np.where(valid, scores, -np.inf)
    return out


def check_rerank_shards(
    shards: Sequence[tuple[Sequence[str], np.ndarray]], ids: Sequence[str], where: str | Path
) -> None:
    """The re-scoring shards must hold the index's rows, in its order."""
    got = [str(i) for shard_ids, _emb in shards for i in shard_ids]
    if len(got) != len(ids):
        raise InputError(
            f"the re-scoring shards hold {len(got)} passages, the index {len(ids)}; give "
            "the shards the index was built from, in the same order",
            where,
        )
    if got != list(ids):
        first = next(i for i, (a, b) in enumerate(zip(got, ids, strict=True)) if a != b)
        raise InputError(
            f"re-scoring shards and index differ at row {first} ({got[first]!r} vs "
            f"{ids[first]!r}); give the shards the index was built from, in the same order",
            where,
        )


def index_search(
    index: faiss.Index,
    ids: Sequence[str],
    query_ids: Sequence[str],
    query_emb: np.ndarray,
    top_k: int = 1000,
    search_params: Mapping | None = None,
    use_gpu: bool = True,
    drop_identical_ids: bool = True,
    rerank_shards: Sequence[tuple[Sequence[str], np.ndarray]] | None = None,
    rerank_depth: int = DEFAULT_RERANK_DEPTH,
) -> pd.DataFrame:
    """Top-k passages per query from an index: a run table as search.exact_search gives.

    search_params: FAISS search-time parameters (see set_search_params). With
    rerank_shards (the shards the index was built from, see check_rerank_shards), the
    best `rerank_depth` candidates are re-scored exactly and the scores in the run are
    exact inner products; without, they are the index's (approximate) scores. Rows FAISS
    leaves empty (-1, fewer than k found) are dropped; so are hits whose doc id equals
    the query id when `drop_identical_ids`.
    """
    if query_emb.shape[0] != len(query_ids):
        raise ValueError(f"{len(query_ids)} query ids for {query_emb.shape[0]} embeddings")
    if query_emb.ndim != 2 or query_emb.shape[1] != index.d:
        raise InputError(
            f"embedding dimension mismatch: queries {query_emb.shape[1:]}, index {index.d}"
        )
    if len(ids) != index.ntotal:
        raise ValueError(f"{len(ids)} ids for an index of {index.ntotal} vectors")
    k_fetch = top_k + 1 if drop_identical_ids else top_k
    depth = max(k_fetch, rerank_depth) if rerank_shards is not None else k_fetch
    depth = max(1, min(depth, index.ntotal))
    nq = len(query_ids)
    if nq == 0 or index.ntotal == 0:
        return rank_run(pd.DataFrame({"query_id": [], "doc_id": [], "score": []}), top_k)
    scores, rows = _faiss_search(index, query_emb, depth, search_params, use_gpu)
    if rerank_shards is not None:
        scores = rescore(rows, query_emb, rerank_shards)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k_fetch]
        scores = np.take_along_axis(scores, keep, axis=1)
        rows = np.take_along_axis(rows, keep, axis=1)
    valid = rows >= 0
    ids_arr = np.asarray(ids, dtype=object)
    qidx = np.nonzero(valid)[0]
    run = pd.DataFrame(
        {
            "query_id": np.asarray(query_ids, dtype=object)[qidx],
            "doc_id": ids_arr[rows[valid]],
            "score": scores[valid].astype(np.float32),
        }
    )
    if drop_identical_ids:
        run = run[run["query_id"] != run["doc_id"]]
    return rank_run(run, top_k)


def recall_against_exact(approx: pd.DataFrame, exact: pd.DataFrame, k: int) -> float:
    """Mean over the exact run's queries of |approx top-k & exact top-k| / |exact top-k|
    (a query missing from `approx` counts 0); 1 - this is the recall loss."""
    exact_top = exact[exact["rank"] <= k].groupby("query_id")["doc_id"].apply(set)
    if exact_top.empty:
        raise ValueError("the exact run has no hits")
    approx_top = approx[approx["rank"] <= k].groupby("query_id")["doc_id"].apply(set)
    shares = [len(docs & approx_top.get(qid, set())) / len(docs) for qid, docs in exact_top.items()]
    return float(np.mean(shares))
