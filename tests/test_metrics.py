"""Metrics: hand-computed values, bad input, and parity with beir's own evaluation."""

from __future__ import annotations

import copy
import math
import random

import pandas as pd
import pytest
from beir.retrieval.evaluation import EvaluateRetrieval

from contriever_repro.data.beir import load_beir_folder
from contriever_repro.errors import InputError
from contriever_repro.evaluation.metrics import (
    DEFAULT_K_VALUES,
    aggregate,
    as_beir_dict,
    beir_metric_name,
    evaluate_run,
    mean_over_subsets,
    qrels_to_dict,
    run_to_beir_dict,
    score_run,
)
from contriever_repro.retrieval.bm25 import bm25_search


def make_run(hits: dict[str, list[tuple[str, float]]]) -> pd.DataFrame:
    """{query: [(doc, score), ...] in rank order} -> run table."""
    rows = [(q, d, r, s) for q, docs in hits.items() for r, (d, s) in enumerate(docs, start=1)]
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])


def make_qrels(rels: dict[str, dict[str, int]]) -> pd.DataFrame:
    rows = [(q, d, r) for q, docs in rels.items() for d, r in docs.items()]
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "relevance"])


def values(run, qrels, ks=(1, 2, 3, 10), ignore_identical_ids=True) -> dict[str, float]:
    return as_beir_dict(score_run(run, qrels, ks, ignore_identical_ids))


def per_query(run, qrels, ks=(1, 2, 3, 10), **kw) -> dict[tuple[str, str], float]:
    pq = evaluate_run(run, qrels, ks, **kw)
    return {(q, m): v for q, m, v in pq.itertuples(index=False)}


# --- hand-computed values -------------------------------------------------------------


def test_capped_recall_uses_min_of_relevant_and_k():
    qrels = make_qrels({"q": {"a": 1, "b": 1, "c": 1}})
    run = make_run({"q": [("a", 3.0), ("b", 2.0), ("x", 1.0)]})
    m = values(run, qrels)
    assert m["R_cap@2"] == 1.0  # 2 hits / min(3, 2)
    assert m["Recall@2"] == round(2 / 3, 5)  # plain recall divides by 3
    assert m["R_cap@10"] == round(2 / 3, 5)
    assert m["P@2"] == 1.0
    assert m["P@3"] == round(2 / 3, 5)


def test_mrr_first_relevant_at_rank_three_and_none():
    qrels = make_qrels({"q1": {"c": 1}, "q2": {"z": 1}})
    run = make_run({"q1": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "q2": [("a", 1.0)]})
    pq = per_query(run, qrels)
    assert pq[("q1", "mrr@10")] == pytest.approx(1 / 3)
    assert pq[("q1", "mrr@2")] == 0.0
    assert pq[("q2", "mrr@10")] == 0.0
    m = values(run, qrels)
    assert m["MRR@10"] == round((1 / 3 + 0) / 2, 5)
    assert m["Accuracy@3"] == 0.5
    assert m["Accuracy@2"] == 0.0


def test_graded_ndcg_hand_computed():
    # trec_eval's nDCG: gain = qrel value, discount log2(rank + 1).
    qrels = make_qrels({"q": {"d1": 2, "d2": 1, "d3": 0}})
    run = make_run({"q": [("d2", 0.9), ("d3", 0.8), ("d1", 0.7)]})
    dcg = 1 / math.log2(2) + 0 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    pq = per_query(run, qrels)
    assert pq[("q", "ndcg@3")] == pytest.approx(dcg / idcg, abs=1e-12)
    assert pq[("q", "ndcg@1")] == pytest.approx(1 / 2, abs=1e-12)
    # rel 0 is judged, so not a hole; nothing here is unjudged.
    assert pq[("q", "hole@3")] == 0.0


def test_hole_counts_unjudged_over_k():
    qrels = make_qrels({"q": {"a": 1}, "other": {"b": 0}})
    run = make_run({"q": [("a", 3.0), ("b", 2.0), ("x", 1.0)]})
    pq = per_query(run, qrels)
    assert pq[("q", "hole@3")] == pytest.approx(1 / 3)  # "b" is judged for another query
    assert pq[("q", "hole@10")] == pytest.approx(1 / 10)  # divides by k, not by #hits


def test_identical_ids_are_ignored_by_default():
    qrels = make_qrels({"q": {"a": 1}})
    run = make_run({"q": [("q", 5.0), ("a", 4.0)]})
    assert per_query(run, qrels)[("q", "mrr@10")] == 1.0
    assert per_query(run, qrels)[("q", "ndcg@1")] == 1.0
    kept = per_query(run, qrels, ignore_identical_ids=False)
    assert kept[("q", "mrr@10")] == 0.5
    assert kept[("q", "ndcg@1")] == 0.0
    assert kept[("q", "hole@1")] == 1.0


def test_query_whose_only_hit_is_itself_still_counts():
    # beir pops the hit and leaves an empty ranking, which pytrec_eval scores as 0.
    qrels = make_qrels({"q1": {"a": 1}, "q2": {"b": 1}})
    run = make_run({"q1": [("a", 1.0)], "q2": [("q2", 1.0)]})
    m = score_run(run, qrels, (1,))
    row = m.set_index("metric").loc["ndcg@1"]
    assert row["value"] == 0.5 and row["n_queries"] == 2


def test_missing_queries_count_for_custom_metrics_only():
    qrels = make_qrels({"q1": {"a": 1}, "q2": {"b": 1}})
    run = make_run({"q1": [("a", 1.0)]})
    m = values(run, qrels, ks=(1,))
    assert m["NDCG@1"] == 1.0  # pytrec_eval: averaged over the one query it scores
    assert m["Recall@1"] == 1.0
    assert m["MRR@1"] == 0.5  # custom: divided by len(qrels)
    assert m["R_cap@1"] == 0.5
    assert m["Accuracy@1"] == 0.5
    table = score_run(run, qrels, (1,)).set_index("metric")
    assert table.loc["ndcg@1", "n_queries"] == 1
    assert table.loc["mrr@1", "n_queries"] == 2


def test_query_without_positive_qrels_gets_zero_capped_recall():
    qrels = make_qrels({"q1": {"a": 1}, "q2": {"b": 0}})
    run = make_run({"q1": [("a", 1.0)], "q2": [("b", 1.0)]})
    pq = per_query(run, qrels, ks=(1,))
    assert pq[("q2", "recall_cap@1")] == 0.0
    assert values(run, qrels, ks=(1,))["R_cap@1"] == 0.5


def test_run_queries_not_in_qrels_are_ignored():
    qrels = make_qrels({"q1": {"a": 1}})
    run = make_run({"q1": [("a", 1.0)], "stray": [("zz", 1.0)]})
    pq = evaluate_run(run, qrels, (1,))
    assert set(pq["query_id"]) == {"q1"}
    assert values(run, qrels, ks=(1,))["Hole@1"] == 0.0


def test_ties_follow_beir_trec_eval_by_doc_id_desc_custom_by_rank():
    # trec_eval orders equal scores by doc id, descending; beir's custom metrics keep
    # insertion (here: rank) order. Both conventions are beir's and are kept.
    qrels = make_qrels({"q": {"a": 1}})
    run = make_run({"q": [("a", 1.0), ("b", 1.0)]})
    pq = per_query(run, qrels, ks=(1,))
    assert pq[("q", "ndcg@1")] == 0.0
    assert pq[("q", "mrr@1")] == 1.0
    swapped = make_run({"q": [("b", 1.0), ("a", 1.0)]})
    assert per_query(swapped, qrels, ks=(1,))[("q", "mrr@1")] == 0.0


def test_rank_column_orders_ties_not_row_order():
    qrels = make_qrels({"q": {"a": 1}})
    run = pd.DataFrame(
        {"query_id": ["q", "q"], "doc_id": ["b", "a"], "rank": [2, 1], "score": [1.0, 1.0]}
    )
    assert per_query(run, qrels, ks=(1,))[("q", "mrr@1")] == 1.0
    assert list(run_to_beir_dict(run)["q"]) == ["a", "b"]


def test_long_form_shape_and_names():
    qrels = make_qrels({"q1": {"a": 1}, "q2": {"b": 2}})
    run = make_run({"q1": [("a", 1.0)], "q2": [("b", 1.0)]})
    pq = evaluate_run(run, qrels, (1, 5))
    assert list(pq.columns) == ["query_id", "metric", "value"]
    families = ["ndcg", "map", "recall", "p", "mrr", "recall_cap", "hole", "accuracy"]
    assert list(dict.fromkeys(pq["metric"])) == [f"{f}@{k}" for f in families for k in (1, 5)]
    assert len(pq) == 2 * 8 * 2
    assert beir_metric_name("recall_cap@100") == "R_cap@100"
    assert beir_metric_name("p@10") == "P@10"


def test_aggregate_rounds_like_beir():
    pq = pd.DataFrame(
        {"query_id": ["a", "b", "c"], "metric": ["ndcg@10"] * 3, "value": [1.0, 0.0, 0.0]}
    )
    out = aggregate(pq)
    assert out.loc[0, "value"] == 0.33333 and out.loc[0, "n_queries"] == 3


def test_conversions():
    qrels = make_qrels({"q": {"a": 2}})
    assert qrels_to_dict(qrels) == {"q": {"a": 2}}
    run = make_run({"q": [("a", 0.5), ("q", 0.25)]})
    run["score"] = run["score"].astype("float32")
    d = run_to_beir_dict(run, ignore_identical_ids=True)
    assert d == {"q": {"a": 0.5}}
    assert type(d["q"]["a"]) is float


# --- bad input ------------------------------------------------------------------------


def test_missing_run_columns_are_named():
    qrels = make_qrels({"q": {"a": 1}})
    with pytest.raises(InputError, match=r"run table is missing columns \['score'\]"):
        evaluate_run(pd.DataFrame({"query_id": ["q"], "doc_id": ["a"]}), qrels)


def test_missing_qrels_columns_are_named():
    run = make_run({"q": [("a", 1.0)]})
    bad = pd.DataFrame({"query_id": ["q"], "doc": ["a"]})
    with pytest.raises(
        InputError, match=r"qrels table is missing columns \['doc_id', 'relevance'\]"
    ):
        evaluate_run(run, bad)


def test_empty_qrels_rejected():
    run = make_run({"q": [("a", 1.0)]})
    with pytest.raises(InputError, match="empty"):
        evaluate_run(run, make_qrels({}))


def test_disjoint_run_and_qrels_rejected():
    with pytest.raises(InputError, match="shares no query"):
        evaluate_run(make_run({"x": [("a", 1.0)]}), make_qrels({"q": {"a": 1}}))


def test_duplicate_hits_and_conflicting_qrels_rejected():
    with pytest.raises(InputError, match="twice"):
        run_to_beir_dict(make_run({"q": [("a", 1.0), ("a", 0.5)]}))
    qrels = pd.DataFrame({"query_id": ["q", "q"], "doc_id": ["a", "a"], "relevance": [1, 2]})
    with pytest.raises(InputError, match="two relevance values"):
        qrels_to_dict(qrels)


def test_bad_k_values_and_nan_scores_rejected():
    qrels = make_qrels({"q": {"a": 1}})
    with pytest.raises(InputError, match="positive"):
        evaluate_run(make_run({"q": [("a", 1.0)]}), qrels, (0, 10))
    with pytest.raises(InputError, match="NaN"):
        evaluate_run(make_run({"q": [("a", float("nan"))]}), qrels)


# --- CQADupStack mean -----------------------------------------------------------------


def test_mean_over_subsets():
    a = pd.DataFrame({"metric": ["ndcg@10", "recall@100"], "value": [0.2, 0.5], "n_queries": 3})
    b = pd.DataFrame({"metric": ["recall@100", "ndcg@10"], "value": [0.7, 0.4], "n_queries": 2})
    out = mean_over_subsets([a, b], expected=2).set_index("metric")
    assert out.loc["ndcg@10", "value"] == pytest.approx(0.3)
    assert out.loc["recall@100", "value"] == pytest.approx(0.6)
    assert out.loc["ndcg@10", "n_queries"] == 5
    assert out.loc["ndcg@10", "n_subsets"] == 2
    with pytest.raises(InputError, match="expected 12"):
        mean_over_subsets([a, b], expected=12)
    with pytest.raises(InputError, match="same metrics"):
        mean_over_subsets([a, b.iloc[:1]])


# --- parity with beir -----------------------------------------------------------------


def beir_numbers(run: pd.DataFrame, qrels: pd.DataFrame, ks) -> dict[str, float]:
    """What Contriever's eval does: evaluate (pops identical ids in place), then custom."""
    qrels_d = qrels_to_dict(qrels)
    results = run_to_beir_dict(run)
    out: dict[str, float] = {}
    for part in EvaluateRetrieval.evaluate(qrels_d, results, list(ks), ignore_identical_ids=True):
        out.update(part)
    # beir's custom metrics raise KeyError on run queries that have no qrels.
    results = {q: hits for q, hits in results.items() if q in qrels_d}
    for name in ("mrr", "r_cap", "hole", "top_k_accuracy"):
        out.update(EvaluateRetrieval.evaluate_custom(qrels_d, results, list(ks), name))
    return out


def assert_parity(run, qrels, ks):
    ours = as_beir_dict(score_run(run, qrels, ks))
    theirs = beir_numbers(run, qrels, ks)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def random_case(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qids = [f"q{i}" for i in range(25)]
    rels: dict[str, dict[str, int]] = {}
    for q in qids:
        judged = rng.sample(docs, rng.randint(1, 12))
        rels[q] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        if all(r == 0 for r in rels[q].values()):
            rels[q][judged[0]] = 1
    # A qrels query with no positive judgement, kept out of the run (beir divides by zero).
    rels["q_nopos"] = {"d1": 0, "d2": 0}
    hits = {}
    for q in qids:
        if rng.random() < 0.2:
            continue  # query missing from the run
        pool = [*docs, q] if rng.random() < 0.3 else docs  # sometimes the query itself
        chosen = rng.sample(pool, rng.randint(0, 40))
        # Scores on a coarse grid so ties are common.
        hits[q] = [(d, round(rng.random(), 1)) for d in chosen]
    hits["stray"] = [("d3", 0.5)]  # a run query without qrels
    hits[qids[0]] = [("d0", 0.5), ("d1", 0.5), ("d2", 0.5)]  # all tied
    rows = [(q, d, r, s) for q, ds in hits.items() for r, (d, s) in enumerate(ds, start=1)]
    run = pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])
    return run, make_qrels(rels)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ks", [DEFAULT_K_VALUES, (1, 2, 7, 30)])
def test_parity_with_beir_on_random_runs(seed, ks):
    run, qrels = random_case(seed)
    assert_parity(run, qrels, ks)


def test_parity_does_not_depend_on_row_order():
    run, qrels = random_case(99)
    shuffled = run.sample(frac=1.0, random_state=0)
    assert score_run(shuffled, qrels).equals(score_run(run, qrels))


def test_evaluate_run_does_not_mutate_inputs():
    run, qrels = random_case(3)
    run0, qrels0 = copy.deepcopy(run), copy.deepcopy(qrels)
    evaluate_run(run, qrels)
    pd.testing.assert_frame_equal(run, run0)
    pd.testing.assert_frame_equal(qrels, qrels0)


@pytest.mark.integration
def test_parity_with_beir_on_scifact_bm25(shared_data):
    corpus, queries, qrels = load_beir_folder(shared_data / "beir" / "scifact", "test")
    run = bm25_search(corpus, queries, top_k=1000)
    assert_parity(run, qrels, DEFAULT_K_VALUES)
    # The paper's TREC-COVID "R@100" is capped recall; on SciFact both exist and differ little.
    m = as_beir_dict(score_run(run, qrels))
    assert 0.6 < m["NDCG@10"] < 0.75
    assert m["R_cap@100"] >= m["Recall@100"] - 1e-9
