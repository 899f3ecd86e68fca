"""BM25 baseline: obvious answers on a tiny corpus, run conventions, real SciFact."""

from __future__ import annotations

import pandas as pd
import pytest

from contriever_repro.data.beir import load_beir_folder
from contriever_repro.errors import InputError
from contriever_repro.evaluation.metrics import as_beir_dict, score_run
from contriever_repro.retrieval.bm25 import BM25Index, bm25_search

CORPUS = pd.DataFrame(
    {
        "doc_id": ["cat", "dog", "fish", "car", "q2"],
        "title": ["Cats", "Dogs", "", "Cars", "Bread"],
        "text": [
            "Cats purr and chase mice around the house.",
            "Dogs bark loudly and love to fetch sticks.",
            "Fish swim in water and breathe through gills.",
            "A car has an engine, four wheels and brakes.",
            "Bread is baked from flour, water and yeast; dogs love bread.",
        ],
    }
)


def queries(**texts: str) -> pd.DataFrame:
    return pd.DataFrame({"query_id": list(texts), "text": list(texts.values())})


def test_obvious_answers_rank_first():
    run = bm25_search(CORPUS, queries(q1="why do dogs bark", q3="engine wheels"), top_k=3)
    top = run[run["rank"] == 1].set_index("query_id")["doc_id"]
    assert top["q1"] == "dog"
    assert top["q3"] == "car"


def test_run_schema_and_ranks_start_at_one():
    run = bm25_search(CORPUS, queries(q1="dogs love water"), top_k=10)
    assert list(run.columns) == ["query_id", "doc_id", "rank", "score"]
    assert str(run["rank"].dtype) == "int32" and str(run["score"].dtype) == "float32"
    assert run["rank"].tolist() == list(range(1, len(run) + 1))
    assert run["score"].is_monotonic_decreasing
    # Only docs sharing a term are returned, so fewer than top_k here.
    assert set(run["doc_id"]) == {"dog", "fish", "q2"}


def test_title_is_indexed():
    run = bm25_search(CORPUS, queries(q="cars"), top_k=5)
    assert run["doc_id"].tolist() == ["car"]


def test_identical_ids_dropped_and_top_k_kept():
    q = queries(q2="bread dogs")
    kept = bm25_search(CORPUS, q, top_k=1, drop_identical_ids=False)
    assert kept["doc_id"].tolist() == ["q2"]
    dropped = bm25_search(CORPUS, q, top_k=1)
    assert dropped["doc_id"].tolist() == ["dog"]
    assert dropped["rank"].tolist() == [1]


def test_stemming_and_stopwords():
    assert bm25_search(CORPUS, queries(q="barking"), top_k=5)["doc_id"].tolist() == ["dog"]
    unstemmed = bm25_search(CORPUS, queries(q="barking"), top_k=5, stemmer_language=None)
    assert unstemmed.empty
    assert bm25_search(CORPUS, queries(q="the and of"), top_k=5).empty
    assert bm25_search(CORPUS, queries(q="zebra"), top_k=5).empty


def test_ties_broken_by_doc_id():
    corpus = pd.DataFrame(
        {"doc_id": ["b", "c", "a"], "title": ["", "", ""], "text": ["same words"] * 3}
    )
    run = bm25_search(corpus, queries(q="words"), top_k=2)
    assert run["doc_id"].tolist() == ["a", "b"]


def test_index_is_reusable_and_deterministic():
    index = BM25Index(CORPUS)
    q = queries(q1="dogs love water", q3="engine")
    pd.testing.assert_frame_equal(index.search(q, top_k=4), index.search(q, top_k=4))
    assert index.search(q, top_k=4)["query_id"].unique().tolist() == ["q1", "q3"]


def test_bad_input():
    with pytest.raises(InputError, match=r"missing columns \['title'\]"):
        bm25_search(CORPUS.drop(columns="title"), queries(q="dogs"))
    with pytest.raises(InputError, match=r"missing columns \['text'\]"):
        bm25_search(CORPUS, pd.DataFrame({"query_id": ["q"]}))
    with pytest.raises(InputError, match="more than once"):
        bm25_search(pd.concat([CORPUS, CORPUS.iloc[:1]]), queries(q="dogs"))
    with pytest.raises(InputError, match="query id more than once"):
        bm25_search(CORPUS, pd.concat([queries(q="dogs"), queries(q="cats")]))
    with pytest.raises(InputError, match="top_k"):
        bm25_search(CORPUS, queries(q="dogs"), top_k=0)
    with pytest.raises(InputError, match="stemmer"):
        bm25_search(CORPUS, queries(q="dogs"), stemmer_language="klingon")


@pytest.mark.integration
def test_scifact_ndcg_in_sane_range(shared_data):
    corpus, queries, qrels = load_beir_folder(shared_data / "beir" / "scifact", "test")
    run = bm25_search(corpus, queries, top_k=100)
    assert run.groupby("query_id")["rank"].min().eq(1).all()
    assert run.groupby("query_id").size().max() == 100
    m = as_beir_dict(score_run(run, qrels, (10, 100)))
    # BEIR's Elasticsearch BM25 reports 0.665 nDCG@10 on SciFact.
    assert m["NDCG@10"] > 0.6
    assert m["Recall@100"] > 0.85
