"""Real data, real model: the workflow's SciFact numbers equal the beir package's own.

Runs the Snakemake workflow on real BEIR SciFact (../shared/data) with the real
all-MiniLM-L6-v2 encoder (mean pooling, L2-normalised, 256 tokens, as its model card
says) and compares with beir's `DenseRetrievalExactSearch` + `EvaluateRetrieval` on
the same model and data. The corpus is cut to every document judged for the 300 test
queries plus a seeded sample of the rest (1,000 of 5,183 documents): both sides encode
it, and what is compared (the workflow's encoding, search, identical-id filtering and
metrics against beir's) does not depend on its size, while CI time does.
"""

from __future__ import annotations

import json
import random
import shutil

import pandas as pd
import pytest

from workflow_utils import base_config, snakemake, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

K_VALUES = [1, 3, 5, 10, 100, 1000]
CORPUS_SIZE = 1000


@pytest.fixture(scope="module")
def scifact_subset(tmp_path_factory, shared_data):
    """SciFact with its test queries and qrels, and a corpus of every judged document
    plus a seeded sample of the others, in the BEIR layout."""
    source = shared_data / "beir" / "scifact"
    folder = tmp_path_factory.mktemp("scifact_subset")
    (folder / "qrels").mkdir()
    shutil.copy(source / "queries.jsonl", folder / "queries.jsonl")
    shutil.copy(source / "qrels" / "test.tsv", folder / "qrels" / "test.tsv")
    qrels = pd.read_csv(source / "qrels" / "test.tsv", sep="\t", dtype=str)
    judged = set(qrels["corpus-id"])
    lines = (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    ids = [json.loads(line)["_id"] for line in lines]
    others = sorted(set(ids) - judged)
    keep = judged | set(random.Random(0).sample(others, CORPUS_SIZE - len(judged)))
    kept = [line for line, doc in zip(lines, ids, strict=True) if doc in keep]
    (folder / "corpus.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    assert len(kept) == CORPUS_SIZE and judged <= keep
    return folder


@pytest.fixture(scope="module")
def workflow_metrics(tmp_path_factory, scifact_subset, minilm_path):
    tmp = tmp_path_factory.mktemp("scifact")
    config = base_config(tmp) | {
        "label": "SciFact with all-MiniLM-L6-v2",
        "datasets": {"scifact": {"source": "local", "path": str(scifact_subset)}},
        "models": {
            "minilm": {
                "source": str(minilm_path),
                "pooling": "mean",
                "normalize": True,
                "score_function": "dot",
                "max_query_length": 256,
                "max_passage_length": 256,
                "batch_size": 128,
            }
        },
        "evaluation": {"top_k": 1000, "k_values": K_VALUES, "ignore_identical_ids": True},
        "resources": {"default": {"gpu": 0, "cpus_per_task": 2, "mem_mb": 8000, "runtime": 60}},
    }
    cfg = write_config(tmp / "config.yaml", config)
    target = tmp / "work" / "metrics" / "minilm" / "datasets" / "scifact.parquet"
    proc = snakemake(str(target), "--configfile", str(cfg), "--cores", "2", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_parquet(target)
    return dict(zip(table["metric"], table["value"], strict=True)), tmp


@pytest.fixture(scope="module")
def beir_metrics(scifact_subset, minilm_path):
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(scifact_subset)).load(split="test")
    model = models.SentenceBERT(str(minilm_path))
    assert model.q_model.max_seq_length == 256
    retriever = EvaluateRetrieval(
        DenseRetrievalExactSearch(model, batch_size=128), score_function="dot", k_values=K_VALUES
    )
    results = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, _p = retriever.evaluate(qrels, results, K_VALUES)
    mrr = retriever.evaluate_custom(qrels, results, K_VALUES, metric="mrr")
    return {**ndcg, **recall, **mrr}


@pytest.mark.parametrize(
    "ours,theirs", [("ndcg@10", "NDCG@10"), ("recall@100", "Recall@100"), ("mrr@100", "MRR@100")]
)
def test_scifact_metrics_equal_beir(workflow_metrics, beir_metrics, ours, theirs):
    metrics, _ = workflow_metrics
    # Same model, data and lengths; only batch composition differs (fp32 noise ~1e-7 in
    # scores), which can at most swap near-ties, so agreement is to the 4th decimal.
    assert metrics[ours] == pytest.approx(beir_metrics[theirs], abs=2e-4)


def test_scifact_run_files_and_provenance(workflow_metrics):
    metrics, tmp = workflow_metrics
    # all-MiniLM-L6-v2 on the whole SciFact: ~0.645; fewer distractors here
    assert 0.6 < metrics["ndcg@10"] < 0.8
    run = pd.read_parquet(tmp / "work" / "runs" / "dense" / "minilm" / "scifact.parquet")
    assert run.groupby("query_id").size().max() == 1000  # all 1,000 documents
    assert run["query_id"].nunique() == 300
    trec = (tmp / "work" / "runs" / "dense" / "minilm" / "scifact.trec").read_text().splitlines()
    assert len(trec) == len(run) and trec[0].split()[1] == "Q0"
    table = pd.read_parquet(tmp / "work" / "metrics" / "minilm" / "datasets" / "scifact.parquet")
    assert {"config_hash", "code_version", "run_sha256", "qrels_sha256"} <= set(table.columns)
