"""In-process retrieval scores of one model on one small data set.

The workflow scores models through its encode → search → evaluate rules; this is the
same pipeline (same encoder loading, pooling, FAISS search and beir-parity metrics)
without files in between, for places that need a number inside one process: the
learning tests and the training benchmark.
"""

from __future__ import annotations

import pandas as pd

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
