"""Real data, real model: few-shot fine-tuning of all-MiniLM-L6-v2 on SciFact train.

The paper's few-shot recipe (A.3) on a CPU budget: SciFact's training split with 10%
held out as dev (729 train / 80 dev queries), in-batch random negatives, AdamW, the
model selected on dev nDCG@10 with early stopping; scored before and after on the
TEST split. MiniLM was trained for cosine similarity (mean pooling, L2-normalised, its
contrastive scale 20 = temperature 0.05), so the objective normalises both sides with
τ = 0.05 and both evaluations use the same cosine spec (mean, normalize=True).

CPU budget (2 cores): one full SciFact corpus encoding takes minutes, so dev and test
are scored against a fixed, seeded sub-corpus: every judged passage of the split plus a
random sample of the others as distractors. Before and after use the same sub-corpus and
spec, so the comparison is fair; the absolute values are above the full-corpus BEIR
nDCG@10 because there are fewer distractors.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from contriever_repro.data.beir import load_beir_folder
from contriever_repro.data.training_sets import convert_training_split
from contriever_repro.evaluation.quick_eval import dense_scores, dev_scorer
from contriever_repro.io import write_table
from contriever_repro.models.spec import ModelSpec
from contriever_repro.training.config import FinetuneConfig
from contriever_repro.training.engine import read_metrics
from contriever_repro.training.finetune import finetune, load_training_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUERY_LEN, PASSAGE_LEN = 64, 128  # MiniLM was trained on 128-token inputs
DISTRACTORS = {"test": 150, "dev": 60}
RECIPE = {
    "data": "scifact",
    "init": "minilm",
    "device": "cpu",
    "nodes": 1,
    "gpus_per_node": 1,
    "num_workers": 0,
    "dev_holdout": 0.1,
    "n_negatives": 0,
    "optimizer": "adamw",
    "pooling": "mean",
    "norm_query": True,
    "norm_doc": True,
    "temperature": 0.05,
    "batch_size_per_device": 12,
    "steps": 12,
    "warmup_steps": 2,
    "lr": 2e-5,
    "eval_every": 6,
    "patience": 3,
    "max_query_length": QUERY_LEN,
    "max_passage_length": PASSAGE_LEN,
    "log_every": 5,
    "checkpoint_every": 1000,
}


def spec_of(source) -> ModelSpec:
    return ModelSpec(
        name="minilm",
        source=str(source),
        pooling="mean",
        normalize=True,
        max_query_length=QUERY_LEN,
        max_passage_length=PASSAGE_LEN,
        batch_size=32,
    )


def sub_corpus(corpus: pd.DataFrame, qrels: pd.DataFrame, n_other: int, seed: int):
    """Every judged passage of `qrels` plus `n_other` seeded random others."""
    judged = corpus["doc_id"].isin(qrels["doc_id"])
    others = np.flatnonzero(~judged.to_numpy())
    pick = np.random.default_rng(seed).choice(others, size=n_other, replace=False)
    keep = judged.to_numpy().copy()
    keep[pick] = True
    return corpus[keep].reset_index(drop=True)


@pytest.fixture(scope="module")
def scifact(tmp_path_factory, shared_data):
    folder = shared_data / "beir" / "scifact"
    root = tmp_path_factory.mktemp("scifact_ft")
    corpus, queries, qrels = load_beir_folder(folder, "test")
    write_table(corpus, root / "corpus.parquet", "corpus")
    counts = convert_training_split(
        folder, "train", root / "corpus.parquet", root / "queries.parquet", root / "records.parquet"
    )
    assert counts["queries"] == 809
    test = (sub_corpus(corpus, qrels, DISTRACTORS["test"], seed=1), queries, qrels)
    return {"root": root, "test": test}


def test_few_shot_fine_tuning_of_minilm_on_scifact(scifact, minilm_path, tmp_path):
    start = time.perf_counter()
    cfg = FinetuneConfig.from_dict("scifact-fewshot", RECIPE)
    root = scifact["root"]
    data = load_training_data(
        cfg, root / "corpus.parquet", root / "queries.parquet", root / "records.parquet"
    )
    assert data.identity["train_queries"] == 729 and data.identity["dev_queries"] == 80
    corpus, dev_queries, dev_qrels = data.dev
    dev_corpus = sub_corpus(corpus, dev_qrels, DISTRACTORS["dev"], seed=2)
    scorer = dev_scorer(spec_of(minilm_path), dev_corpus, dev_queries, dev_qrels)

    before = dense_scores(spec_of(minilm_path), *scifact["test"])["NDCG@10"]
    t_train = time.perf_counter()
    summary = finetune(
        cfg,
        minilm_path,
        data,
        tmp_path / "run",
        export_dir=tmp_path / "out",
        dev_scorer=lambda dev: scorer,
    )
    t_train = time.perf_counter() - t_train
    after = dense_scores(spec_of(tmp_path / "out"), *scifact["test"])["NDCG@10"]

    # It ran, and the export is the best dev checkpoint (weights and recorded step).
    assert summary["finished"], summary
    dev = [r for r in read_metrics(tmp_path / "run") if "dev_ndcg@10" in r]
    assert [r["step"] for r in dev][0] == 0 and len(dev) >= 2
    best = max(dev, key=lambda r: r["dev_ndcg@10"])  # first of equal scores, as the tracker
    assert summary["best_step"] == best["step"]
    assert summary["best_dev_ndcg@10"] == pytest.approx(best["dev_ndcg@10"])
    best_meta = json.loads((tmp_path / "run" / "best" / "pretraining.json").read_text())
    assert best_meta["step"] == best["step"]
    out, kept = (
        load_file(tmp_path / "out" / "model.safetensors"),
        load_file(tmp_path / "run" / "best" / "model.safetensors"),
    )
    assert out.keys() == kept.keys() and all(torch.equal(out[k], kept[k]) for k in out)
    # The exported model scores on dev what the run recorded for its best step.
    exported_dev = dense_scores(spec_of(tmp_path / "out"), dev_corpus, dev_queries, dev_qrels)
    assert exported_dev["NDCG@10"] == pytest.approx(best["dev_ndcg@10"], abs=1e-6)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert all(np.isfinite(losses))

    print(
        f"\nSciFact test nDCG@10 (sub-corpus of {len(scifact['test'][0])} passages): "
        f"before {before:.4f}, after {after:.4f} (best dev step {summary['best_step']}, "
        f"dev nDCG@10 {[round(r['dev_ndcg@10'], 4) for r in dev]}); training "
        f"{t_train:.0f} s, test {time.perf_counter() - start:.0f} s"
    )
    # MiniLM is already trained for similarity: a few CPU steps must not hurt it.
    assert after >= before - 0.01, (before, after)
