"""In-process retrieval scores of one model on one small data set.

The workflow scores models through its encode → search → evaluate rules; this is the
same pipeline (same encoder loading, pooling, FAISS search and beir-parity metrics)
without files in between, for places that need a number inside one process: the
learning tests, the training benchmark and fine-tuning's dev selection (`dev_scorer`).
"""

from __future__ import annotations

import pandas as pd

from ..errors import InputError
from ..models.spec import ModelSpec, load_encoder
from ..retrieval.encode import encode_table
from ..retrieval.search import exact_search
from .metrics import as_beir_dict, score_run


def dense_scores(
    spec: ModelSpec,
    corpus: pd.DataFrame,
    queries: pd.DataFrame,
    qrels: pd.DataFrame,
    k_values=(1, 10, 100),
    ignore_identical_ids: bool = True,
) -> dict[str, float]:
    """beir-style metrics ({"NDCG@10": ..., "Recall@100": ...}) of `spec` on the tables."""
    tokenizer, model = load_encoder(spec, "cpu")
    return model_scores(
        spec, tokenizer, model, corpus, queries, qrels, k_values, ignore_identical_ids
    )


def model_scores(
    spec: ModelSpec,
    tokenizer,
    model,
    corpus: pd.DataFrame,
    queries: pd.DataFrame,
    qrels: pd.DataFrame,
    k_values=(1, 10, 100),
    ignore_identical_ids: bool = True,
) -> dict[str, float]:
    """`dense_scores` of a model already in memory (on any device, left in its mode)."""
    doc_ids, doc_emb = encode_table(corpus, spec, tokenizer, model, "passage", what="encode corpus")
    query_ids, query_emb = encode_table(
        queries, spec, tokenizer, model, "query", what="encode queries"
    )
    run = exact_search(
        query_ids,
        query_emb,
        [(doc_ids, doc_emb)],
        top_k=max(k_values),
        drop_identical_ids=ignore_identical_ids,
        use_gpu=False,
    )
    return as_beir_dict(score_run(run, qrels, k_values, ignore_identical_ids))


def dev_scorer(
    spec: ModelSpec,
    corpus: pd.DataFrame,
    queries: pd.DataFrame,
    qrels: pd.DataFrame,
    metric: str = "ndcg@10",
    ignore_identical_ids: bool = True,
):
    """`(model, tokenizer) -> score` of one metric (e.g. "ndcg@10") on a dev set, for
    fine-tuning's model selection: the same encoding and metrics as the workflow."""
    from .metrics import beir_metric_name

    _, _, k = metric.partition("@")
    if not k.isdigit():
        raise InputError(f"eval_metric {metric!r}: expected <family>@<k>, e.g. ndcg@10")
    key = beir_metric_name(metric)

    def score(model, tokenizer) -> float:
        values = model_scores(
            spec, tokenizer, model, corpus, queries, qrels, (int(k),), ignore_identical_ids
        )
        return float(values[key])

    return score
