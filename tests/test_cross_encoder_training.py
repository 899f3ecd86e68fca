"""Fine-tuning a cross-encoder (re-ranker) on the shared engine: the (query, passage)
pair grid, learning, the export that transformers loads, exact resume, bad settings."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from contriever_repro.errors import InputError
from contriever_repro.io import write_table
from contriever_repro.models.cross_encoder import encode_pairs
from contriever_repro.models.fingerprint import model_fingerprint
from contriever_repro.models.tiny_bert import build_tiny_bert
from contriever_repro.training.checkpoint import Checkpoints
from contriever_repro.training.config import FinetuneConfig
from contriever_repro.training.cross_encoder import CrossEncoderBatches, build_cross_encoder
from contriever_repro.training.engine import read_metrics
from contriever_repro.training.finetune import finetune, load_training_data
from contriever_repro.training.finetune_batches import TrainingExamples

ROOT = Path(__file__).resolve().parents[1]

# A lexical task: each passage holds one of 30 key words among 6 fillers; a query holds a
# key word among 2 fillers, and the passages with its key are relevant. Held-out queries
# are new sentences. A random cross-encoder ranks at chance; learning to match the key
# words takes the tiny model ~100 CPU steps (5 s) with in-batch negatives only.
SETTINGS = {
    "objective": "cross_encoder",
    "device": "cpu",
    "nodes": 1,
    "gpus_per_node": 1,
    "num_workers": 0,
    "batch_size_per_device": 16,
    "n_negatives": 0,
    "steps": 120,
    "warmup_steps": 4,
    "schedule": "constant",
    "lr": 2e-3,
    "dropout": 0.0,
    "optimizer": "adamw",
    "max_query_length": 8,
    "max_passage_length": 12,
    "log_every": 10,
    "checkpoint_every": 1000,
    "data": "lexical",
    "init": "tiny",
}
N_KEYS, DOCS_PER_KEY, FILLERS = 30, 8, 60


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small ops run ~30x slower when two threads contend
    with other processes for two cores; the previous setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(name="ce", **overrides) -> FinetuneConfig:
    return FinetuneConfig.from_dict(name, {**SETTINGS, **overrides})


@pytest.fixture(scope="module")
def lexical(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross_encoder")
    rng = random.Random(0)
    syllables = ["ba", "ko", "ri", "mu", "te", "lo", "sa", "ne", "vi", "du", "pe", "go"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(3)) for _ in range(400)})
    rng.shuffle(words)
    keys, fillers = words[:N_KEYS], words[N_KEYS : N_KEYS + FILLERS]

    def sentence(key: str, n_fill: int, r: random.Random) -> str:
        w = r.sample(fillers, n_fill)
        w.insert(r.randrange(n_fill + 1), key)
        return " ".join(w)

    docs = [(k, sentence(k, 6, rng)) for k in keys for _ in range(DOCS_PER_KEY)]
    doc_ids = [f"d{i}" for i in range(len(docs))]
    by_key = {k: [d for d, (kk, _) in zip(doc_ids, docs, strict=True) if kk == k] for k in keys}

    def queries(n: int, seed: int) -> list[tuple[str, str]]:
        r = random.Random(seed)
        return [(k, sentence(k, 2, r)) for k in (r.choice(keys) for _ in range(n))]

    train, held_out = queries(400, 1), queries(100, 2)
    corpus = pd.DataFrame({"doc_id": doc_ids, "title": "", "text": [t for _, t in docs]})
    qdf = pd.DataFrame({"query_id": [f"q{i}" for i in range(len(train))]})
    qdf["text"] = [t for _, t in train]
    records = pd.DataFrame(
        {
            "query_id": qdf["query_id"],
            "positive_ids": [by_key[k] for k, _ in train],
            "negative_ids": [[] for _ in train],
            "negative_kind": "",
        }
    )
    write_table(corpus, root / "corpus.parquet", "corpus")
    write_table(qdf, root / "queries.parquet", "queries")
    write_table(records, root / "records.parquet", "records")
    build_tiny_bert(
        [t for _, t in docs] * 3,
        root / "tiny",
        vocab_size=500,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        seed=0,
    )
    # Held-out re-ranking: each query's candidates are one relevant passage (first) and
    # nine passages of other keys.
    r = random.Random(3)
    candidates = []
    for key, query in held_out:
        relevant = [t for k, t in docs if k == key]
        others = [t for k, t in docs if k != key]
        candidates.append((query, [r.choice(relevant), *r.sample(others, 9)]))
    return {
        "root": root,
        "model": root / "tiny",
        "files": (root / "corpus.parquet", root / "queries.parquet", root / "records.parquet"),
        "candidates": candidates,
    }


def data_of(lexical, cfg):
    return load_training_data(cfg, *lexical["files"])


def mrr(model, tokenizer, candidates, max_length: int) -> float:
    """Mean reciprocal rank of the relevant passage (ties count half)."""
    model.eval()
    ranks = []
    with torch.no_grad():
        for query, passages in candidates:
            ids, mask, types = encode_pairs(
                tokenizer, [query] * len(passages), passages, max_length
            )
            s = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0]
            ranks.append(1 + float((s[1:] > s[0]).sum()) + 0.5 * float((s[1:] == s[0]).sum()))
    return float(np.mean([1 / r for r in ranks]))


def tokenizer_of(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# --------------------------------------------------------------------------- pair grid


def test_every_query_meets_every_key_of_its_batch_at_a_known_logit(lexical):
    """Pair p = (query p // K, key p % K), K = B(1+N) keys = [golds; negatives of query
    0, 1, ...]; each is exactly the tokenizer's only_second pair; query i's target is i."""
    q = pd.DataFrame({"query_id": ["a", "b", "c"], "text": ["x1 kobari", "x2 tesalo", "x3 vipe"]})
    c = pd.DataFrame(
        {
            "doc_id": [f"p{i}" for i in range(8)],
            "title": "",
            "text": [f"passage {i} " + "word " * i for i in range(8)],
        }
    )
    r = pd.DataFrame(
        {
            "query_id": ["a", "b", "c"],
            "positive_ids": [["p0"], ["p1", "p2"], ["p3"]],
            "negative_ids": [[], [], []],
            "negative_kind": "",
        }
    )
    ex = TrainingExamples.from_tables(q, c, r)
    tok = tokenizer_of(lexical["model"])
    batches = CrossEncoderBatches(
        ex, tok, 3, seed=5, n_negatives=1, max_query_length=6, max_passage_length=6
    )
    b = batches.batch(0)
    examples, passages = b["examples"].tolist(), b["passages"].tolist()
    assert sorted(examples) == [0, 1, 2] and len(passages) == 6
    assert b["pair_input_ids"].shape[0] == 3 * 6 and b["targets"].tolist() == [0, 1, 2]
    for i, e in enumerate(examples):
        assert passages[i] in ex.positives(e).tolist()  # gold column i
        assert passages[3 + i] not in ex.positives(e).tolist()  # its negative
    qtexts, ptexts = ex.query_texts.to_pylist(), ex.passage_texts.to_pylist()
    for p in range(18):
        query, key = qtexts[examples[p // 6]], ptexts[passages[p % 6]]
        want = tok(query, key, truncation="only_second", max_length=12)
        n = int(b["pair_attention_mask"][p].sum())
        assert b["pair_input_ids"][p, :n].tolist() == want["input_ids"]
        assert b["pair_token_type_ids"][p, :n].tolist() == want["token_type_ids"]
    # the same draws as the bi-encoder's batches (seeds and resume are shared)
    assert batches.draw(0)[1].tolist() == passages


def test_a_query_too_long_for_only_second_is_cut_too(lexical):
    tok = tokenizer_of(lexical["model"])
    long_query = " ".join(["kobari"] * 40)
    ids, mask, types = encode_pairs(tok, [long_query, "kobari"], ["tesalo vipe", "tesalo"], 10)
    assert ids.shape == (2, 10) and mask[0].sum() == 10 and types[0, -1] == 1
    assert ids[1, : int(mask[1].sum())].tolist() == tok("kobari", "tesalo")["input_ids"]


# --------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def trained(lexical, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ce_run")
    cfg = config()
    summary = finetune(
        cfg, lexical["model"], data_of(lexical, cfg), tmp / "run", export_dir=tmp / "out"
    )
    return {"cfg": cfg, "summary": summary, "run": tmp / "run", "out": tmp / "out"}


def test_fine_tuning_makes_the_cross_encoder_rank_held_out_positives_first(lexical, trained):
    from transformers import AutoModelForSequenceClassification

    cfg, tok = trained["cfg"], tokenizer_of(trained["out"])
    torch.manual_seed(cfg.seed)  # the run's initial model, head included
    init = build_cross_encoder(cfg, lexical["model"]).model
    length = cfg.max_query_length + cfg.max_passage_length
    before = mrr(init, tok, lexical["candidates"], length)
    model = AutoModelForSequenceClassification.from_pretrained(str(trained["out"]))
    after = mrr(model, tok, lexical["candidates"], length)
    print(f"held-out MRR of the relevant passage among 10: {before:.3f} -> {after:.3f}")
    assert before < 0.4 and after > before + 0.25, (before, after)
    assert trained["summary"]["finished"] and trained["summary"]["step"] == cfg.steps
    logged = [r for r in read_metrics(trained["run"]) if "loss" in r]
    assert {"loss", "accuracy", "margin", "score_std"} <= set(logged[-1])
    assert logged[-1]["loss"] < logged[0]["loss"] and logged[-1]["margin"] > logged[0]["margin"]


def test_the_export_loads_with_transformers_and_scores_as_the_trained_model(lexical, trained):
    from transformers import AutoModelForSequenceClassification

    out, cfg = trained["out"], trained["cfg"]
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["architectures"] == ["BertForSequenceClassification"]
    assert len(config_json["id2label"]) == 1
    meta = json.loads((out / "pretraining.json").read_text())
    assert (
        meta["stage"] == "fine-tuning" and meta["finished"] and meta["objective"] == "cross_encoder"
    )
    assert meta["config"]["objective"] == "cross_encoder"
    assert (out / "README.md").is_file() and not (out / "modules.json").exists()
    assert len(model_fingerprint(out)) == 16

    # the trained weights as the run's last checkpoint holds them
    ckpts = Checkpoints(trained["run"], 0, 1)
    shared, _ = ckpts.load(ckpts.latest(), map_location="cpu")
    torch.manual_seed(123)  # a different head draw: every weight must come from the checkpoint
    trained_model = build_cross_encoder(cfg, lexical["model"])
    trained_model.load_state_dict(shared["model"], strict=True)
    tok = tokenizer_of(out)
    loaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert all(
        torch.equal(v, loaded.state_dict()[k]) for k, v in trained_model.model.state_dict().items()
    )
    query, passages = lexical["candidates"][0]
    ids, mask, types = encode_pairs(tok, [query] * len(passages), passages, 20)
    with torch.no_grad():
        want = trained_model.eval().scores(ids, mask, types)
        got = loaded(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0]
        # The loaded weights are memory-mapped at offsets that are not 64-byte aligned,
        # which lets the CPU kernels round differently (|diff| ~ 1e-9); copied into fresh
        # memory they give the trained model's logits bit for bit.
        realigned = copy.deepcopy(loaded)
        same = realigned(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(same, want)

    # a finished run asked again publishes its export without training
    again = finetune(
        cfg, lexical["model"], data_of(lexical, cfg), trained["run"], export_dir=out.parent / "b"
    )
    assert again["step"] == cfg.steps
    assert (out.parent / "b" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()


# --------------------------------------------------------------------------- resume, precision


def test_an_interrupted_asam_run_resumes_to_the_uninterrupted_weights(lexical, tmp_path):
    cfg = config(
        optimizer="asam", steps=8, checkpoint_every=4, log_every=1, dropout=0.1,
        batch_size_per_device=8, n_negatives=1, schedule="linear", warmup_steps=2,
    )  # fmt: skip
    data = data_of(lexical, cfg)
    finetune(cfg, lexical["model"], data, tmp_path / "a", export_dir=tmp_path / "a_out")
    part = finetune(cfg, lexical["model"], data, tmp_path / "b", stop_at=5)
    assert part["step"] == 5 and not part["finished"]
    finetune(cfg, lexical["model"], data, tmp_path / "b", export_dir=tmp_path / "b_out",
             resume="require")  # fmt: skip
    wa, wb = (
        load_file(tmp_path / "a_out" / "model.safetensors"),
        load_file(tmp_path / "b_out" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    la = [r["loss"] for r in read_metrics(tmp_path / "a") if "loss" in r]
    assert la == [r["loss"] for r in read_metrics(tmp_path / "b") if "loss" in r]


def test_bf16_autocast_trains_and_exports_fp32(lexical, tmp_path):
    cfg = config(precision="bf16", steps=2, warmup_steps=1, batch_size_per_device=4)
    summary = finetune(
        cfg, lexical["model"], data_of(lexical, cfg), tmp_path / "run", export_dir=tmp_path / "out"
    )
    assert summary["finished"]
    assert all(np.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run") if "loss" in r)
    assert all(
        t.dtype == torch.float32 for t in load_file(tmp_path / "out" / "model.safetensors").values()
    )


def test_the_training_script_takes_the_objective_from_the_experiment(lexical, tmp_path):
    spec = {**SETTINGS, "steps": 2, "warmup_steps": 1, "batch_size_per_device": 4}
    corpus, queries, records = lexical["files"]
    cmd = [
        sys.executable, str(ROOT / "scripts" / "finetune.py"), "--name", "ce-cli",
        "--experiment", json.dumps(spec), "--init", str(lexical["model"]),
        "--corpus", str(corpus), "--queries", str(queries), "--records", str(records),
        "--run-dir", str(tmp_path / "run"), "--export", str(tmp_path / "out"), "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"]


# --------------------------------------------------------------------------- bad input


def test_bad_cross_encoder_settings_name_their_key(lexical, tmp_path):
    with pytest.raises(InputError, match=r"finetuning\.x\.objective: must be one of"):
        FinetuneConfig.from_dict("x", {"objective": "cross-encoder"})
    with pytest.raises(InputError, match=r"finetuning\.x\.dev_holdout: a cross_encoder run"):
        FinetuneConfig.from_dict("x", {"objective": "cross_encoder", "dev_holdout": 0.1})
    with pytest.raises(InputError, match=r"finetuning\.x\.dev_split: a cross_encoder run"):
        FinetuneConfig.from_dict("x", {"objective": "cross_encoder", "dev_split": "dev"})
    # pairs longer than the model's 64 positions
    cfg = config(max_query_length=32, max_passage_length=48)
    with pytest.raises(InputError, match="80 tokens per .* 64 positions"):
        build_cross_encoder(cfg, lexical["model"])
    # a classifier with two labels is not a cross-encoder's init
    from transformers import AutoModelForSequenceClassification

    two = AutoModelForSequenceClassification.from_pretrained(str(lexical["model"]), num_labels=2)
    two.save_pretrained(tmp_path / "two")
    tokenizer_of(lexical["model"]).save_pretrained(tmp_path / "two")
    with pytest.raises(InputError, match="2 labels"):
        finetune(config(), tmp_path / "two", data_of(lexical, config()), tmp_path / "run")


def test_the_bi_encoder_identity_is_unchanged_by_the_new_key():
    """Run folders and exports made before `objective` existed still match."""
    assert "objective" not in FinetuneConfig.from_dict("p", {}).training_dict()
    cross = FinetuneConfig.from_dict("p", {"objective": "cross_encoder"}).training_dict()
    assert cross["objective"] == "cross_encoder"


def test_negatives_cannot_be_mined_by_a_cross_encoder_experiment():
    from contriever_repro.plan import finetune_config

    config = {
        "datasets": {"d": {}},
        "models": {"m": {"source": "workflow:ce"}},
        "finetuning": {
            "ce": {"objective": "cross_encoder", "data": "d", "init": "bert-base-uncased"},
            "p2": {"data": "d", "init": "bert-base-uncased", "mined_by": "ce", "hard_ratio": 0.1},
        },
    }
    assert finetune_config(config, "ce").cross_encoder
    with pytest.raises(InputError, match=r"finetuning\.p2\.mined_by: 'ce' trains a cross-encoder"):
        finetune_config(config, "p2")
