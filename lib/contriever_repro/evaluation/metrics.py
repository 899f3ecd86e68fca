"""Retrieval metrics computed exactly as the `beir` package (v1.0.1 to v2.x) computes them.

Why exactly: the paper's numbers come from beir's `EvaluateRetrieval.evaluate` and
`evaluate_custom`, so every convention below is beir's, checked against its source and
against beir itself in the tests:

* nDCG@k, MAP@k, Recall@k and P@k come from `pytrec_eval` (trec_eval) with measures
  `ndcg_cut`, `map_cut`, `recall` and `P` at the given cutoffs. nDCG uses graded gains
  (the qrel value); the others count rel >= 1 as relevant. trec_eval orders each query's
  hits by score, breaking ties by doc id in *descending* order, whatever the run's ranks.
  These are averaged over the queries pytrec_eval returns: queries that are both in the
  qrels and in the run (trec_eval without `-c`), including a query whose every hit was
  removed as an identical id, which scores 0.
* MRR@k, R_cap@k (hits / min(#relevant, k)), Hole@k (share of the top k that no qrel
  judges, divided by k even when fewer hits exist) and Accuracy@k (a relevant hit in the
  top k) are beir's custom metrics: hits are sorted by score with a stable sort, so ties
  keep the run's order (here: by `rank` when the run has one, else row order), relevance
  is rel > 0, and the sum is divided by the number of queries in the qrels. Per query,
  a qrels query missing from the run is stored as 0, so a plain mean gives beir's value.
* `ignore_identical_ids` removes hits whose doc id equals the query id before any metric.
  beir's `evaluate` removes them from the results dict in place and Contriever calls it
  before `evaluate_custom`, so the custom metrics see the filtered run as well.
* Dataset-level values are rounded to 5 decimals, as beir does.

Where beir crashes we pick a defined value: a run query that is not in the qrels is
ignored by every metric (beir's custom MRR/R_cap/Accuracy raise KeyError on it); a query
whose qrels hold no positive judgement gets R_cap = 0 (beir divides by zero), so the
average still divides by the number of qrels queries; a run that shares no query with
the qrels is an InputError (beir divides by zero).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import pytrec_eval

from ..errors import InputError

DEFAULT_K_VALUES: tuple[int, ...] = (1, 3, 5, 10, 100, 1000)

# Our lower-case family name -> (pytrec_eval measure, key prefix in its output) or None
# for beir's custom metrics, and the name beir prints.
_PYTREC_FAMILIES = {
    "ndcg": ("ndcg_cut", "ndcg_cut_"),
    "map": ("map_cut", "map_cut_"),
    "recall": ("recall", "recall_"),
    "p": ("P", "P_"),
}
_CUSTOM_FAMILIES = ("mrr", "recall_cap", "hole", "accuracy")
FAMILIES: tuple[str, ...] = (*_PYTREC_FAMILIES, *_CUSTOM_FAMILIES)
_BEIR_PREFIX = {
    "ndcg": "NDCG",
    "map": "MAP",
    "recall": "Recall",
    "p": "P",
    "mrr": "MRR",
    "recall_cap": "R_cap",
    "hole": "Hole",
    "accuracy": "Accuracy",
}
BEIR_ROUNDING = 5

RUN_REQUIRED = ("query_id", "doc_id", "score")
QRELS_REQUIRED = ("query_id", "doc_id", "relevance")


def _require_columns(df: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{what} table is missing columns {missing} (has {list(df.columns)})")


def _check_k_values(k_values: Iterable[int]) -> list[int]:
    ks = list(k_values)
    if not ks:
        raise InputError("k_values is empty")
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise InputError(f"k_values must be positive integers, got {k!r}")
    if len(set(ks)) != len(ks):
        raise InputError(f"k_values has duplicates: {ks}")
    return [int(k) for k in ks]


def beir_metric_name(metric: str) -> str:
    """The key beir prints for one of our metric names, e.g. `ndcg@10` -> `NDCG@10`."""
    family, sep, k = metric.partition("@")
    if not sep or family not in _BEIR_PREFIX:
        raise InputError(f"unknown metric name {metric!r}")
    return f"{_BEIR_PREFIX[family]}@{k}"


def qrels_to_dict(qrels: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Qrels table -> beir's {query_id: {doc_id: relevance}}.

    Exact duplicate rows are merged; the same (query, doc) with two different
    relevance values is an InputError (beir would silently keep the last one).
    """
    _require_columns(qrels, QRELS_REQUIRED, "qrels")
    if len(qrels) == 0:
        raise InputError("qrels table is empty: nothing to evaluate against")
    if qrels[list(QRELS_REQUIRED)].isna().any().any():
        raise InputError("qrels table has missing values")
    out: dict[str, dict[str, int]] = {}
    for q, d, r in zip(
        qrels["query_id"].astype(str),
        qrels["doc_id"].astype(str),
        qrels["relevance"].astype("int64").tolist(),
        strict=True,
    ):
        docs = out.setdefault(q, {})
        if d in docs and docs[d] != r:
            raise InputError(f"qrels give query {q!r} doc {d!r} two relevance values")
        docs[d] = int(r)
    return out


def _ordered_run(run: pd.DataFrame) -> pd.DataFrame:
    """The run with each query's hits in rank order (row order when there is no rank)."""
    _require_columns(run, RUN_REQUIRED, "run")
    if run["score"].isna().any():
        raise InputError("run has NaN scores")
    if run["query_id"].isna().any() or run["doc_id"].isna().any():
        raise InputError("run has missing query or doc ids")
    if "rank" in run.columns:
        run = run.sort_values("rank", kind="stable")
    return run


def run_to_beir_dict(
    run: pd.DataFrame, ignore_identical_ids: bool = False
) -> dict[str, dict[str, float]]:
    """Run table -> beir's {query_id: {doc_id: score}} with Python float scores.

    Each query's docs are inserted in rank order, which is the tie order beir's custom
    metrics use. With `ignore_identical_ids` a query keeps its (possibly empty) entry
    after its identical-id hit is removed, exactly as beir's in-place pop leaves it.
    """
    run = _ordered_run(run)
    qids = run["query_id"].astype(str).tolist()
    dids = run["doc_id"].astype(str).tolist()
    scores = run["score"].astype("float64").tolist()
    out: dict[str, dict[str, float]] = {q: {} for q in dict.fromkeys(qids)}
    for q, d, s in zip(qids, dids, scores, strict=True):
        if d in out[q]:
            raise InputError(f"run lists doc {d!r} twice for query {q!r}")
        out[q][d] = s
    if ignore_identical_ids:
        for q, docs in out.items():
            docs.pop(q, None)
    return out


def _pytrec_scores(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], ks: list[int]
) -> dict[str, dict[str, float]]:
    cut = ",".join(str(k) for k in ks)
    measures = {f"{measure}.{cut}" for measure, _ in _PYTREC_FAMILIES.values()}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(results)


def _custom_one_query(
    hits: dict[str, float],
    judged: dict[str, int],
    annotated: set[str],
    ks: list[int],
) -> dict[str, float]:
    """beir's mrr / recall_cap / hole / top_k_accuracy for one query."""
    k_max = max(ks)
    # Same expression as beir: a stable sort, so equal scores keep insertion order.
    top = [d for d, _ in sorted(hits.items(), key=lambda item: item[1], reverse=True)[:k_max]]
    n_pos = sum(1 for r in judged.values() if r > 0)
    first_rel = next((i + 1 for i, d in enumerate(top) if judged.get(d, 0) > 0), None)
    out: dict[str, float] = {}
    for k in ks:
        top_k = top[:k]
        n_rel = sum(1 for d in top_k if judged.get(d, 0) > 0)
        hit = first_rel is not None and first_rel <= k
        out[f"mrr@{k}"] = 1.0 / first_rel if hit else 0.0
        out[f"recall_cap@{k}"] = n_rel / min(n_pos, k) if n_pos else 0.0
        out[f"hole@{k}"] = sum(1 for d in top_k if d not in annotated) / k
        out[f"accuracy@{k}"] = 1.0 if hit else 0.0
    return out


def evaluate_run(
    run: pd.DataFrame,
    qrels: pd.DataFrame,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    ignore_identical_ids: bool = True,
) -> pd.DataFrame:
    """Per-query metrics in long form (query_id, metric, value), beir's conventions.

    Metric names are lower-case `ndcg@k`, `map@k`, `recall@k`, `p@k`, `mrr@k`,
    `recall_cap@k`, `hole@k`, `accuracy@k`. The trec_eval metrics have one row per query
    that pytrec_eval scores; the custom ones have one row per qrels query. Rows keep
    beir's summation order, so `aggregate` reproduces beir's numbers bit for bit.
    """
    ks = _check_k_values(k_values)
    qrels_dict = qrels_to_dict(qrels)
    results = run_to_beir_dict(run, ignore_identical_ids=ignore_identical_ids)
    if not any(q in qrels_dict for q in results):
        raise InputError(
            f"the run ({len(results)} queries) shares no query with the qrels "
            f"({len(qrels_dict)} queries); are they from the same dataset and split?"
        )

    columns: dict[str, list[tuple[str, float]]] = {
        f"{family}@{k}": [] for family in FAMILIES for k in ks
    }
    for q, per_query in _pytrec_scores(qrels_dict, results, ks).items():
        for family, (_, prefix) in _PYTREC_FAMILIES.items():
            for k in ks:
                columns[f"{family}@{k}"].append((q, float(per_query[f"{prefix}{k}"])))

    annotated = {d for docs in qrels_dict.values() for d in docs}
    in_run = [q for q in results if q in qrels_dict]
    missing = [q for q in qrels_dict if q not in results]
    for q in in_run:
        for name, value in _custom_one_query(results[q], qrels_dict[q], annotated, ks).items():
            columns[name].append((q, value))
    for q in missing:
        for family in _CUSTOM_FAMILIES:
            for k in ks:
                columns[f"{family}@{k}"].append((q, 0.0))

    rows = [(q, name, v) for name, pairs in columns.items() for q, v in pairs]
    out = pd.DataFrame(rows, columns=["query_id", "metric", "value"])
    return out.astype({"query_id": str, "metric": str, "value": "float64"})


def aggregate(per_query: pd.DataFrame) -> pd.DataFrame:
    """Dataset-level table (metric, value, n_queries): per-metric means rounded as beir does.

    Values are summed one by one in row order, as beir's `+=` loop does, so the result
    equals beir's to the last bit before rounding.
    """
    _require_columns(per_query, ("query_id", "metric", "value"), "per-query metrics")
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for metric, value in zip(
        per_query["metric"].tolist(), per_query["value"].astype("float64").tolist(), strict=True
    ):
        sums[metric] = sums.get(metric, 0.0) + value
        counts[metric] = counts.get(metric, 0) + 1
    rows = [(m, round(sums[m] / counts[m], BEIR_ROUNDING), counts[m]) for m in sums]
    out = pd.DataFrame(rows, columns=["metric", "value", "n_queries"])
    return out.astype({"metric": str, "value": "float64", "n_queries": "int64"})


def score_run(
    run: pd.DataFrame,
    qrels: pd.DataFrame,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    ignore_identical_ids: bool = True,
) -> pd.DataFrame:
    """Dataset-level metrics of a run: `aggregate(evaluate_run(...))`."""
    return aggregate(evaluate_run(run, qrels, k_values, ignore_identical_ids))


def as_beir_dict(table: pd.DataFrame) -> dict[str, float]:
    """Dataset-level table -> {beir key: value}, e.g. {"NDCG@10": 0.66, "R_cap@100": ...}."""
    _require_columns(table, ("metric", "value"), "metrics")
    return {
        beir_metric_name(m): float(v) for m, v in zip(table["metric"], table["value"], strict=True)
    }


def mean_over_subsets(frames: Sequence[pd.DataFrame], expected: int | None = None) -> pd.DataFrame:
    """Arithmetic mean of each metric over dataset-level tables (the CQADupStack convention).

    BEIR, Contriever and Pyserini report CQADupStack as the unweighted mean of the 12
    sub-forums' metrics, not as one pooled evaluation. Every table must hold the same
    metrics. Returns (metric, value, n_subsets[, n_queries summed]); the mean is not
    re-rounded, since each input is already beir's rounded value.
    """
    frames = list(frames)
    if not frames:
        raise InputError("no metric tables to average")
    if expected is not None and len(frames) != expected:
        raise InputError(f"expected {expected} metric tables to average, got {len(frames)}")
    for f in frames:
        _require_columns(f, ("metric", "value"), "metrics")
        if f["metric"].duplicated().any():
            raise InputError("a metric table lists a metric twice")
    metrics = frames[0]["metric"].tolist()
    for i, f in enumerate(frames[1:], start=1):
        if set(f["metric"]) != set(metrics):
            diff = sorted(set(f["metric"]) ^ set(metrics))
            raise InputError(f"metric table {i} does not hold the same metrics as table 0: {diff}")
    values = [dict(zip(f["metric"], f["value"].astype("float64"), strict=True)) for f in frames]
    out = pd.DataFrame(
        {
            "metric": metrics,
            "value": [sum(v[m] for v in values) / len(frames) for m in metrics],
            "n_subsets": len(frames),
        }
    )
    if all("n_queries" in f.columns for f in frames):
        counts = [dict(zip(f["metric"], f["n_queries"], strict=True)) for f in frames]
        out["n_queries"] = [int(sum(c[m] for c in counts)) for m in metrics]
    return out
