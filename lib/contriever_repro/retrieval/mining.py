"""Hard-negative mining for phase 2 of MS MARCO fine-tuning (paper appendix A.2).

The paper trains a first model with random negatives, "mine[s] hard negatives with
this first model, and re-train[s] a second model with those"; the released code has no
mining step and the paper gives no depth or rank range. Here: the training queries are
searched with the phase-1 model, the top `depth` hits are kept, every judged positive
of the query is dropped, hits with rank_min <= rank <= rank_max remain, and
`per_query` of them are sampled uniformly without replacement.

`rank` is the retrieval rank among all hits, positives included: it is not renumbered
after dropping positives, so a rank range means the same slice of the ranking for
every query (sentence-transformers' `mine_hard_negatives` instead counts ranks among
the non-positive candidates).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..data.mined import MINED_SCHEMA, read_mined, write_mined  # noqa: F401  (re-exported)
from ..errors import InputError

log = logging.getLogger(__name__)

RUN_COLUMNS = ("query_id", "doc_id", "rank", "score")


def positives_by_query(positives: Mapping[str, set[str]] | pd.DataFrame) -> dict[str, set[str]]:
    """{query_id: judged positive doc ids} from a mapping or a records table
    (query_id, positive_ids list); repeated query ids are merged."""
    if isinstance(positives, pd.DataFrame):
        missing = [c for c in ("query_id", "positive_ids") if c not in positives.columns]
        if missing:
            raise InputError(f"training records: missing columns {missing}")
        out: dict[str, set[str]] = {}
        for qid, ids in zip(positives["query_id"], positives["positive_ids"], strict=True):
            out.setdefault(str(qid), set()).update(str(d) for d in ids)
        return out
    return {str(q): {str(d) for d in ids} for q, ids in positives.items()}


def _query_rng(seed: int, query_id: str) -> np.random.Generator:
    """One generator per query from (seed, query id): a query's sample does not depend
    on which other queries are mined or in what order."""
    key = hashlib.sha256(f"{seed}\0{query_id}".encode()).digest()
    return np.random.default_rng([seed & 0xFFFFFFFF, int.from_bytes(key[:8], "little")])


def check_mining_args(
    *, depth: int, rank_min: int, rank_max: int, per_query: int | None, n_docs: int
) -> None:
    """The settings' errors, before any encoding or search is done."""
    if depth < 1:
        raise InputError(f"mining_depth must be at least 1, got {depth}")
    if depth > n_docs:
        raise InputError(
            f"mining_depth = {depth} is larger than the corpus ({n_docs} documents); "
            f"lower mining_depth to at most {n_docs}"
        )
    if rank_min < 1:
        raise InputError(f"mining_rank_min must be at least 1 (ranks are 1-based), got {rank_min}")
    if rank_min > rank_max:
        raise InputError(
            f"mining_rank_min = {rank_min} is larger than mining_rank_max = {rank_max}"
        )
    if rank_max > depth:
        raise InputError(
            f"mining_rank_max = {rank_max} is deeper than mining_depth = {depth}: "
            "no hit below the depth is retrieved"
        )
    if per_query is not None and per_query < 1:
        raise InputError(f"mining_per_query must be at least 1 or null (all), got {per_query}")


def mine_negatives(
    run: pd.DataFrame,
    positives: Mapping[str, set[str]] | pd.DataFrame,
    *,
    depth: int,
    rank_min: int,
    rank_max: int,
    per_query: int | None,
    seed: int,
    n_docs: int,
) -> pd.DataFrame:
    """Hard negatives per query from a search run (query_id, doc_id, rank 1-based, score).

    Returns (query_id, doc_id, rank, score, positive_score) sorted by query and rank;
    `rank` is the retrieval rank among all hits (not renumbered after dropping the
    positives); `positive_score` is the best score of the query's positives among its
    top `depth` hits, NaN when none was retrieved that deep. Queries left with no
    negative have no rows.
    """
    check_mining_args(
        depth=depth, rank_min=rank_min, rank_max=rank_max, per_query=per_query, n_docs=n_docs
    )
    missing = [c for c in RUN_COLUMNS if c not in run.columns]
    if missing:
        raise InputError(f"search run: missing columns {missing}")
    pos = positives_by_query(positives)
    run = run[list(RUN_COLUMNS)].astype({"query_id": str, "doc_id": str})
    queries = pd.unique(run["query_id"])
    unjudged = [q for q in queries if q not in pos]
    if unjudged:
        raise InputError(
            f"{len(unjudged)} query(ies) of the search run have no positives in the training "
            f"records (first: {unjudged[:5]}); mine only queries with judged positives"
        )
    deepest = int(run.groupby("query_id").size().max()) if len(run) else depth
    if deepest < depth:
        raise InputError(
            f"the search run has at most {deepest} hits per query but mining_depth = "
            f"{depth}: search at least {depth} deep"
        )
    top = run[run["rank"] <= depth]
    is_pos = np.fromiter(
        (d in pos[q] for q, d in zip(top["query_id"], top["doc_id"], strict=True)),
        dtype=bool,
        count=len(top),
    )
    pos_score = top[is_pos].groupby("query_id")["score"].max()
    cand = top[~is_pos & (top["rank"] >= rank_min) & (top["rank"] <= rank_max)]
    cand = cand.sort_values(["query_id", "rank"], kind="stable")
    if per_query is not None:
        keep = []
        for qid, rows in cand.groupby("query_id", sort=False).indices.items():
            if len(rows) <= per_query:
                keep.append(rows)
            else:
                chosen = _query_rng(seed, qid).choice(len(rows), size=per_query, replace=False)
                keep.append(rows[np.sort(chosen)])
        cand = cand.iloc[np.sort(np.concatenate(keep))] if keep else cand.iloc[:0]
    out = cand.assign(positive_score=cand["query_id"].map(pos_score).astype("float64"))
    out = out.astype(
        {"rank": "int32", "score": "float32", "positive_score": "float32"}
    ).reset_index(drop=True)
    log.info(
        "mined %d negatives for %d of %d queries (depth %d, ranks %d-%d, per query %s)",
        len(out),
        out["query_id"].nunique(),
        len(queries),
        depth,
        rank_min,
        rank_max,
        "all" if per_query is None else per_query,
    )
    return out[MINED_SCHEMA.names]


def mining_metadata(
    *,
    model_fingerprint: str,
    model: str,
    source: str,
    depth: int,
    rank_min: int,
    rank_max: int,
    per_query: int | None,
    seed: int,
    training_set: str,
    queries: str,
    n_docs: int,
    **extra,
) -> dict:
    """Provenance stored with the mined table (see data.mined)."""
    return {
        "model_fingerprint": model_fingerprint,
        "model": model,
        "source": source,
        "depth": depth,
        "rank_min": rank_min,
        "rank_max": rank_max,
        "per_query": per_query,
        "seed": seed,
        "training_set": training_set,
        "queries": queries,
        "n_docs": n_docs,
        **extra,
    }
