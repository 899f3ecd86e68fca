"""The CUDA paths: encoding in half precision, pre-training in every precision, the
attention kernels they run on, torchrun with NCCL, and the torch exact search.

Every test here needs a CUDA GPU and is skipped without one (CI has none); run them on a
GPU node with `pytest -m gpu tests/test_gpu.py`. Nothing here imports faiss, snakemake,
pytrec_eval or beir, which a bare GPU machine may lack.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contriever_repro.data.demo_world import generate_pretraining_corpus
from contriever_repro.models.attention import DEFAULT_SDPA_BACKENDS, set_sdpa_backends
from contriever_repro.models.spec import ModelSpec, load_encoder
from contriever_repro.models.tiny_bert import build_tiny_bert
from contriever_repro.retrieval.encode import encode_texts, token_batches
from contriever_repro.retrieval.torch_search import torch_topk
from contriever_repro.training.config import PretrainConfig
from contriever_repro.training.launch import launch_prefix
from contriever_repro.training.loop import load_tokenizer, pretrain, read_metrics
from contriever_repro.training.shards import tokenize_text_file

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small BERT (4 layers, 256 wide) with its own vocabulary, its text and shards."""
    root = tmp_path_factory.mktemp("gpu_world")
    text = generate_pretraining_corpus(root / "text.txt", 3000, seed=0)
    lines = text.read_text(encoding="utf-8").splitlines()
    model = root / "bert"
    build_tiny_bert(
        lines,
        model,
        vocab_size=8000,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        intermediate_size=1024,
        seed=0,
    )
    # No dropout: its masks are drawn per dtype and shape, and the curves of two
    # precisions are compared below.
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    shards = root / "shards" / "demo"
    shards.mkdir(parents=True)
    tokenize_text_file(text, load_tokenizer(model), shards / "part-000")
    # passages of every length up to a few hundred tokens
    texts = [" ".join(lines[i : i + 1 + i % 9]) for i in range(0, 2400, 3)]
    return {"root": root, "model": model, "shards": shards, "texts": texts}


def _encode(world, device: str, dtype: str, weights: str = "fp32") -> np.ndarray:
    spec = ModelSpec(name="m", source=str(world["model"]))
    tokenizer, model = load_encoder(spec, device, weights_dtype=weights)
    texts = world["texts"]
    return encode_texts(texts, tokenizer, model, max_length=256, batch_size=64, dtype=dtype)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_gpu_fp32_encoding_equals_cpu(world):
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu, gpu = _encode(world, "cpu", "fp32"), _encode(world, "cuda", "fp32")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("weights", ["half", "fp32"])
def test_half_precision_encoding_agrees_with_fp32(world, dtype, weights):
    """Half-precision weights (what encoding jobs load) and autocast over fp32 weights
    both give embeddings within cosine 0.999 of fp32 for every text."""
    reference = _encode(world, "cpu", "fp32")
    got = _encode(world, "cuda", dtype, weights=dtype if weights == "half" else "fp32")
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert _cosines(got, reference).min() >= 0.999


def test_half_weights_are_loaded_in_half_on_gpu_only(world):
    spec = ModelSpec(name="m", source=str(world["model"]))
    _, gpu = load_encoder(spec, "cuda", weights_dtype="bf16")
    _, cpu = load_encoder(spec, "cpu", weights_dtype="bf16")
    assert next(gpu.parameters()).dtype == torch.bfloat16
    assert next(cpu.parameters()).dtype == torch.float32


def _attention_kernels(world, backends) -> list[str]:
    """Names of the attention ops a bf16 forward over batches of varied widths runs."""
    previous = set_sdpa_backends(backends)
    try:
        spec = ModelSpec(name="m", source=str(world["model"]))
        tokenizer, model = load_encoder(spec, "cuda", weights_dtype="bf16")
        batches = list(token_batches(world["texts"][:256], tokenizer, 256, 32))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with torch.inference_mode():
                for _, batch in batches:
                    model(**{k: v.cuda() for k, v in batch.items()})
            torch.cuda.synchronize()
    finally:
        set_sdpa_backends(previous)
    return [e.key for e in prof.key_averages() if "attention" in e.key.lower()]


def test_the_default_backends_never_run_cudnn_attention(world):
    kernels = _attention_kernels(world, DEFAULT_SDPA_BACKENDS)
    assert kernels and not any("cudnn" in k for k in kernels), kernels


def _spec(precision: str, **overrides) -> dict:
    return {
        "tokenizer": "bert",
        "sources": ["demo"],
        "device": "cuda",
        "nodes": 1,
        "gpus_per_node": 1,
        "num_workers": 0,
        "chunk_length": 128,
        "batch_size_per_device": 32,
        "queue_size": 256,
        "momentum": 0.99,
        "norm_query": True,
        "norm_doc": True,
        "temperature": 0.1,
        "lr": 1e-4,
        "warmup_steps": 2,
        "steps": 8,
        "log_every": 1,
        "checkpoint_every": 1000,
        "precision": precision,
        **overrides,
    }


def _config(precision: str, **overrides) -> PretrainConfig:
    return PretrainConfig.from_dict(f"gpu-{precision}", _spec(precision, **overrides))


@pytest.fixture(scope="module")
def curves(world, tmp_path_factory):
    """8 MoCo steps in each precision, from the same seed and data."""
    set_sdpa_backends(DEFAULT_SDPA_BACKENDS)
    out = {}
    for precision in PRECISIONS:
        run = tmp_path_factory.mktemp(f"run-{precision}")
        pretrain(_config(precision), world["model"], {"demo": world["shards"]}, run, None)
        out[precision] = read_metrics(run)
    return out


@pytest.mark.parametrize("precision", PRECISIONS)
def test_pretraining_runs_in_every_precision(curves, precision):
    records = curves[precision]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in records)
    assert all(r["step_s"] > 0 and r["peak_mem_mb"] > 0 for r in records)
    assert records[-1]["stdq"] > 0  # no collapse


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_follows_the_tf32_loss_curve(curves, precision):
    """Same seed and data, no dropout: the curves differ by reduced-precision noise."""
    tf32 = np.array([r["loss"] for r in curves["tf32"]][1:])
    other = np.array([r["loss"] for r in curves[precision]][1:])
    assert np.abs(other - tf32).mean() <= 0.05 * np.abs(tf32).mean() + 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_key_weights_give_autocasts_keys_exactly_on_gpu(world, dtype):
    """The key encoder's half Linear copies compute bitwise what autocast computes over
    its fp32 weights, on the GPU's kernels too."""
    from transformers import AutoModel

    from contriever_repro.training.contrastive import Encoder, MoCo

    moco = MoCo(Encoder(AutoModel.from_pretrained(world["model"])), queue_size=64).cuda()
    tokenizer = load_tokenizer(world["model"])
    batch = tokenizer(world["texts"][:64], padding=True, truncation=True, max_length=128,
                      return_tensors="pt").to("cuda")  # fmt: skip
    with torch.autocast("cuda", dtype=dtype), torch.no_grad():
        want = moco.encoder_k(batch["input_ids"], batch["attention_mask"])
        got = moco.encode_keys(batch["input_ids"], batch["attention_mask"])
    assert moco.key_half_weights.copies[0].dtype == dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("nproc", [1, 2])
def test_torchrun_on_gpus(world, tmp_path, nproc):
    """The launch the workflow uses, on `nproc` GPUs; two processes join over NCCL."""
    if torch.cuda.device_count() < nproc:
        pytest.skip(f"needs {nproc} GPUs")
    spec = _spec("bf16", steps=4, gpus_per_node=nproc, checkpoint_every=2)
    cmd = launch_prefix(sys.executable, 1, nproc).split()
    cmd += [str(ROOT / "scripts" / "pretrain.py"), "--name", "gpu-ddp"]
    cmd += ["--experiment", json.dumps(spec), "--init", str(world["model"])]
    cmd += ["--source", f"demo={world['shards']}", "--run-dir", str(tmp_path / "run")]
    cmd += ["--export", str(tmp_path / "model")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "NCCL_DEBUG": "INFO"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]
    final = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert json.loads((final / "meta.json").read_text())["world_size"] == nproc
    if nproc > 1:
        assert "NCCL" in result.stdout + result.stderr
    assert (tmp_path / "model" / "model.safetensors").is_file()


def _reference_topk(docs: np.ndarray, queries: np.ndarray, k: int):
    """FAISS IndexFlatIP on CPU where FAISS is installed, else an exact float64 top-k."""
    try:
        import faiss
    except ImportError:
        scores = queries.astype(np.float64) @ docs.astype(np.float64).T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # score desc, then lower row
        idx = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(scores, idx, axis=1).astype(np.float32), idx
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    return index.search(queries, k)


def test_cuda_search_equals_the_cpu_reference():
    rng = np.random.default_rng(3)
    docs = rng.standard_normal((200_000, 768), dtype=np.float32)
    queries = rng.standard_normal((500, 768), dtype=np.float32)
    want_scores, want_ids = _reference_topk(docs, queries, 100)
    torch.backends.cuda.matmul.allow_tf32 = True  # the search must turn it off itself
    try:
        for chunks in ({}, {"doc_chunk": 30_000, "query_chunk": 128}):
            scores, ids = torch_topk(docs, queries, 100, device="cuda", **chunks)
            assert torch.backends.cuda.matmul.allow_tf32 is True
            np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-4)
            same = np.mean([set(a) == set(b) for a, b in zip(ids, want_ids, strict=True)])
            assert same >= 0.99, same  # the rest differ only where rounding swaps a tie
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_unpadded_pretraining_follows_the_padded_loss_curve(curves, world, tmp_path, precision):
    """unpadded: packed tokens through the GPU's SDPA kernels (with a key mask) and its
    index kernels give the padded run's curve within the precision's noise."""
    cfg = _config(precision, unpadded=True)
    pretrain(cfg, world["model"], {"demo": world["shards"]}, tmp_path / "run", None)
    packed = np.array([r["loss"] for r in read_metrics(tmp_path / "run")][1:])
    padded = np.array([r["loss"] for r in curves[precision]][1:])
    assert np.isfinite(packed).all()
    assert np.abs(packed - padded).mean() <= 0.05 * np.abs(padded).mean() + 0.05


# Last: inductor's code generation takes the longest. reduce-overhead replays CUDA graphs.
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_bf16_compiled_with_inductor_follows_the_tf32_loss_curve(curves, world, tmp_path, mode):
    cfg = _config("bf16", compile="inductor", compile_mode=mode, pad_multiple=32)
    pretrain(cfg, world["model"], {"demo": world["shards"]}, tmp_path / "run", None)
    compiled = np.array([r["loss"] for r in read_metrics(tmp_path / "run")][1:])
    tf32 = np.array([r["loss"] for r in curves["tf32"]][1:])
    assert np.isfinite(compiled).all()
    assert np.abs(compiled - tf32).mean() <= 0.05 * np.abs(tf32).mean() + 0.05
