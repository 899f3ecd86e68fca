"""bench/bench_gpu.py, the one script a lent GPU runs (issue 12): its FLOPs count, its
exact-search reference, and a CPU smoke run of every section with the packages the GPU
machine lacks blocked, so that GPU time is never spent finding out it does not start."""

from __future__ import annotations

import datetime
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_gpu.py"
# Not installed on the lent GPU machine (KINDS.md's package list).
BLOCKED = (
    "faiss",
    "snakemake",
    "pytrec_eval",
    "beir",
    "jsonschema",
    "bm25s",
    "Stemmer",
    "mwparserfromhell",
)


@pytest.fixture(scope="module")
def bench_gpu():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module("bench_gpu")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def _blocking_env(tmp_path: Path, log: Path | None = None) -> dict:
    """PYTHONPATH with fake modules first that raise ImportError (and note who tried):
    every subprocess the bench starts inherits the block."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name in BLOCKED:
        (fakes / f"{name}.py").write_text(
            "import os\n"
            "if os.environ.get('BLOCKED_IMPORT_LOG'):\n"
            "    with open(os.environ['BLOCKED_IMPORT_LOG'], 'a') as fh:\n"
            "        fh.write(__name__ + '\\n')\n"
            "raise ImportError('not on the GPU machine')\n"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(fakes), str(ROOT / "lib")])
    env["HF_HUB_OFFLINE"] = "1"
    if log is not None:
        env["BLOCKED_IMPORT_LOG"] = str(log)
    return env


def test_bert_forward_flops_against_a_hand_count(bench_gpu):
    # 10 tokens, 2 layers, hidden 4, intermediate 8; per layer:
    projections = 4 * (2 * 10 * 4 * 4)  # Q, K, V, output: 1280
    feed_forward = 2 * (2 * 10 * 4 * 8)  # up and down: 1280
    attention = 2 * (2 * 10 * 10 * 4)  # QKᵀ and AV: 1600
    assert projections + feed_forward + attention == 4160
    assert bench_gpu.bert_forward_flops(10, 2, 4, 8) == 2 * 4160
    # MoCo: query encoder forward + backward (3x), key encoder forward (1x).
    one = bench_gpu.bert_forward_flops(3, 2, 4, 8)
    assert bench_gpu.moco_step_flops([10], [10, 3], 2, 4, 8) == 3 * 8320 + 8320 + one


def test_bert_forward_flops_equal_torchs_count_of_a_real_bert(bench_gpu):
    """The formula against torch's FLOP counter on a real (eager-attention) BERT."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=40,
        attn_implementation="eager",  # matmuls the counter sees (CPU SDPA it does not)
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, 50, (3, 11))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    assert counter.get_total_flops() == 3 * bench_gpu.bert_forward_flops(11, 2, 16, 40)


class _Widths:
    """Batches of given (query width, key width) per step, as PretrainBatches gives."""

    def __init__(self, widths):
        self.widths = widths

    def batch(self, b):
        wq, wk = self.widths[b]
        return {
            "q_input_ids": np.zeros((2, wq)),
            "k_input_ids": np.zeros((2, wk)),
            "q_attention_mask": np.ones((2, wq), dtype=int),
            "k_attention_mask": np.ones((2, wk), dtype=int),
        }


def test_compiling_steps_are_those_that_first_meet_a_query_or_key_width(bench_gpu):
    batches = _Widths([(32, 64), (64, 32), (32, 64), (64, 64), (96, 32), (32, 32)])
    # Query and key encoders compile apart: step 2's query width 64 is new even though
    # step 1's key views had it.
    assert bench_gpu.new_width_steps(batches, 6) == [1, 2, 5]
    assert bench_gpu.new_width_steps(batches, 3) == [1, 2]


def test_step_summary_leaves_the_compiling_steps_out_and_keeps_their_times(bench_gpu):
    records = [
        {
            "step": step,
            "step_s": seconds,
            "seq_per_s": 10.0,
            "tok_per_s": 100.0,
            "peak_mem_mb": 1.0,
            "loss": 1.0,
            "accuracy": 0.5,
            **{f"{part}_s": 0.0 for part in ("data", "forward", "backward", "optimizer")},
        }
        for step, seconds in enumerate([9.0, 1.0, 8.0, 1.0, 3.0, 7.0], start=1)
    ]
    out = bench_gpu.summarise_steps(records, warmup=2, left_out=(3, 6))
    assert out["window_steps"] == [4, 5]
    assert out["step_s"] == 2.0 and out["step_s_max"] == 3.0
    assert out["left_out_steps"] == [3, 6] and out["left_out_step_s"] == [8.0, 7.0]
    assert len(out["step_s_curve"]) == 6  # the curves keep every step
    assert bench_gpu.summarise_steps(records, warmup=2)["step_s"] == 19.0 / 4
    with pytest.raises(RuntimeError, match="left-out steps"):
        bench_gpu.summarise_steps(records, warmup=4, left_out=(5, 6))
    flops = bench_gpu.step_flops(
        _Widths([(8, 8)] * 6), [4, 5], {"layers": 2, "hidden": 4, "intermediate": 8}
    )
    assert flops["real_tokens_per_step"] == 32 and flops["padded_tokens_per_step"] == 32


def test_time_estimates_keep_compiled_and_eager_variants_apart(bench_gpu):
    """A budget check must not skip 30-s eager steps because inductor took minutes
    once, nor start a compiled variant on an eager variant's time."""
    bench = object.__new__(bench_gpu.Bench)
    bench.data = {
        "device": {"wall_s": 5.0},
        "encode": {"runs": {"ours-fp32": {"wall_s": 40.0}}},
        "pretrain": {"runs": {"tf32": [{"wall_s": 20.0}], "bf16-cudagraphs": [{"wall_s": 200.0}]}},
        "search": {"run": None},
    }
    assert bench._estimate("pretrain", "tf32")[0] == 20.0  # its own run
    assert bench._estimate("pretrain", "fp16") == (20.0, "a pretrain variant took 20 s")
    need, basis = bench._estimate("pretrain", "bf16-compile")
    assert need == 200.0 and "that compiles" in basis
    assert bench._estimate("encode", "st-fp32")[0] == 40.0
    assert bench._estimate("search", "search")[0] == 200.0  # the longest of any section
    del bench.data["pretrain"]["runs"]["tf32"]
    assert bench._estimate("pretrain", "fp16")[0] == 200.0  # nothing eager yet


def test_plan_repeats_the_targets_pair_then_runs_every_variant_once(bench_gpu):
    from types import SimpleNamespace

    args = SimpleNamespace(precisions=None, pretrain_variants=None, quick=False, repeats=2)
    plan = bench_gpu._plan(args, "cuda", ["encode", "pretrain", "search"])
    names = [(section, name, repeat) for section, name, _, repeat in plan]
    variants = list(bench_gpu.PRETRAIN_VARIANTS)
    assert names[0] == ("device", "device", None)
    assert [n for s, n, _ in names if s == "encode"] == [
        f"{impl}-{p}" for p in ("fp32", "fp16", "bf16") for impl in ("ours", "st")
    ]
    training = [(n, r) for s, n, r in names if s == "pretrain"]
    assert names[-len(training) - 1] == ("search", "search", None)  # short: before training
    # The targets' pair with its repeats, every other variant once, then their repeats.
    assert training[:4] == [("tf32", 1), ("bf16", 1), ("tf32", 2), ("bf16", 2)]
    others = [v for v in variants if v not in ("tf32", "bf16")]
    assert training[4 : 4 + len(others)] == [(v, 1) for v in others]
    assert training[4 + len(others) :] == [
        (v, 2) for v in others if not bench_gpu.PRETRAIN_VARIANTS[v].sync
    ]
    assert variants[:4] == ["tf32", "bf16", "fp16", "fp32"]  # every precision first
    assert set(variants) == set(bench_gpu.default_pretrain_variants("cuda", quick=False))


def _pretrain_data(bench_gpu, sizes: dict, dims: dict, steps: dict) -> dict:
    """A bench record with one good pre-training run per variant (seconds per step)."""
    run = {
        "status": "ok",
        "precision": "tf32",
        "sync_timing": False,
        "peak_mem_mib": 1.0,
        "model_flops_per_step": 1e12,
        "real_tokens_per_step": 1.0,
        "padded_tokens_per_step": 1.0,
        "loss_curve": [1.0],
        **{f"{p}_s": 0.0 for p in ("data", "forward", "backward", "optimizer", "other")},
        "seq_per_s": 1.0,
        "tok_per_s": 1.0,
    }
    return {
        "meta": {"device": "cuda", "sizes": sizes, "setup": {"dims": dims}},
        "device": {"gemm_tflops": {"tf32": 400.0}},
        "encode": {"runs": {}},
        "pretrain": {"runs": {v: [run | {"step_s": t}] for v, t in steps.items()}},
        "search": {"run": None},
        "skipped": [],
    }


def test_the_papers_run_is_costed_from_a_measured_step_at_the_papers_sizes(bench_gpu, tmp_path):
    """500k steps x 32 GPUs at the one-GPU step, only where the bench ran the paper's
    per-GPU share (64 views, queue 131072, 256-token chunks, BERT-base)."""
    full = dict(bench_gpu.FULL)
    data = _pretrain_data(bench_gpu, full, full["model_dims"], {"tf32": 0.054})
    (row,) = bench_gpu.summarise(data, tmp_path)["pretrain"]
    assert row["paper_gpu_hours"] == pytest.approx(500_000 * 32 * 0.054 / 3600)  # 240
    assert row["paper_wall_days"] == pytest.approx(500_000 * 0.054 / 86400)
    assert row["mfu"] == pytest.approx(1e12 / 0.054 / 1e12 / 400)
    data["summary"] = {"pretrain": [row], "comparisons": {}}
    data["meta"] |= {"versions": {}, "time_budget_s": None, "quick": False, "date": "today"}
    assert "| 240 |" in bench_gpu.report(data)
    quick = dict(bench_gpu.QUICK)
    data = _pretrain_data(bench_gpu, quick, quick["model_dims"], {"tf32": 0.054})
    assert "paper_gpu_hours" not in bench_gpu.summarise(data, tmp_path)["pretrain"][0]


def test_float64_reference_topk_and_comparison(bench_gpu):
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((1000, 16), dtype=np.float32)
    queries = rng.standard_normal((7, 16), dtype=np.float32)
    scores, ids = bench_gpu.float64_topk(docs, queries, 10, chunk=128)
    full = queries.astype(np.float64) @ docs.astype(np.float64).T
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1))
    same = bench_gpu.compare_topk((scores.astype(np.float32), ids), (scores, ids))
    assert same["identical_id_sets"] == 1.0 and same["unexplained_queries"] == 0
    # One query's last hit swapped for a document scoring far below the k-th.
    other, other_scores = ids.copy(), scores.copy()
    odd = int(np.argsort(full[0])[0])
    other[0, -1], other_scores[0, -1] = odd, full[0, odd]
    worse = bench_gpu.compare_topk((other_scores, other), (scores, ids))
    assert worse["identical_id_sets"] == pytest.approx(6 / 7)
    assert worse["unexplained_queries"] == 1


def test_bench_imports_nothing_the_gpu_machine_lacks(tmp_path):
    """The bench and every library module its workers import load with faiss,
    snakemake, pytrec_eval, beir (and the workflow's other extras) missing, and none of
    them even tries to import one."""
    log = tmp_path / "tried.txt"
    code = (
        "import sys\n"
        "import bench_gpu\n"
        "from contriever_repro import io\n"
        "from contriever_repro.data import beir\n"
        "from contriever_repro.models import attention, spec\n"
        "from contriever_repro.retrieval import encode, torch_search\n"
        "from contriever_repro.training import config, engine, loop, shards\n"
        f"print(sorted(m for m in {BLOCKED!r} if m in sys.modules))\n"
    )
    env = _blocking_env(tmp_path, log)
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "bench")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
    assert not log.exists(), log.read_text()


def test_time_budget_skips_what_would_not_fit_and_still_writes(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--sections", "search"]
    cmd += ["--out", str(out), "--time-budget-s", "0.001"]
    proc = subprocess.run(
        cmd, env=_blocking_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "bench_gpu.json").read_text())
    assert [(s["section"], s["variant"]) for s in data["skipped"]] == [
        ("device", "device"),
        ("search", "search"),
    ]
    assert data["device"]["status"] == "skipped"
    assert all(t["met"] is None for t in data["targets"])
    assert "## Skipped and failed" in (out / "bench_gpu.md").read_text()


@pytest.mark.integration
def test_quick_cpu_run_has_every_section(tmp_path, shared_data, minilm_path):
    """`--quick --device cpu` end to end, as the GPU machine would run it: faiss and
    the rest blocked in every worker, the corpus and tokenizer given by path."""
    corpus = shared_data / "beir" / "scifact" / "corpus.jsonl"
    if not corpus.exists():
        pytest.skip("SciFact's corpus.jsonl is not in ../shared/data")
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(BENCH), "--quick", "--device", "cpu", "--threads", "1"]
    cmd += ["--corpus", str(corpus), "--tokenizer", str(minilm_path)]
    cmd += ["--out", str(out), "--work", str(work)]
    proc = subprocess.run(
        cmd, env=_blocking_env(tmp_path), capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "bench_gpu.json").read_text())
    meta = data["meta"]
    assert meta["device"] == "cpu" and meta["quick"]
    datetime.datetime.fromisoformat(meta["date"])
    assert meta["versions"]["torch"] and meta["versions"]["sentence-transformers"]
    assert data["skipped"] == [
        {"section": "encode", "variant": v, "reason": "fp16 encoding needs a GPU"}
        for v in ("ours-fp16", "st-fp16")
    ]

    dev = data["device"]
    assert dev["status"] == "ok" and dev["device_name"]
    assert set(dev["gemm_tflops"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in dev["gemm_tflops"].values())

    assert {k: r["status"] for k, r in data["encode"]["runs"].items()} == {
        "ours-fp32": "ok",
        "st-fp32": "ok",
        "ours-bf16": "ok",
        "st-bf16": "ok",
    }
    rows = {r["precision"]: r for r in data["summary"]["encode"]}
    assert set(rows) == {"fp32", "bf16"}
    for row in rows.values():
        assert row["ours_vs_st"] > 0
        for impl in ("ours", "st"):
            assert row[impl]["docs_per_s"] > 0 and row[impl]["tflops"] > 0
            assert row[impl]["attention_ops"]
    # The same model in the same precision: sentence-transformers' embeddings are ours.
    assert rows["fp32"]["st"]["cosine_vs_ours_fp32"]["min"] > 0.99999
    assert rows["bf16"]["ours"]["cosine_vs_ours_fp32"]["min"] > 0.99
    assert data["encode"]["runs"]["ours-fp32"]["sdpa_backends_enabled"] == [
        "flash",
        "efficient",
        "math",
    ]

    runs = data["pretrain"]["runs"]
    assert set(runs) == {"tf32", "bf16"}
    for (run,) in runs.values():
        assert run["status"] == "ok" and run["measured_steps"] == 5
        assert len(run["loss_curve"]) == 8 and all(np.isfinite(run["loss_curve"]))
        assert run["model_flops_per_step"] > 0 and run["attention_ops"]
    prows = {r["variant"]: r for r in data["summary"]["pretrain"]}
    assert prows["bf16"]["mfu"] > 0 and prows["tf32"]["vs_tf32"] == 1.0
    cmp = data["summary"]["comparisons"]
    assert cmp["bf16_over_tf32_step"] > 0
    assert cmp["loss_mean_abs_diff_bf16_vs_tf32"] >= 0

    search = data["search"]["run"]
    assert search["status"] == "ok" and search["faiss"].startswith("not importable")
    assert search["vs_float64"]["identical_id_sets"] == 1.0
    assert search["vs_float64"]["unexplained_queries"] == 0

    targets = {t["target"]: t for t in data["targets"]}
    assert targets["encode bf16: min per-text cosine vs our fp32"]["met"] is True
    assert targets["search: torch top-k vs float64"]["met"] is True
    assert targets["pretrain: bf16 step / TF32 step"]["measured"] > 0
    md = (out / "bench_gpu.md").read_text()
    for heading in ("## Device", "## Encoding", "## Pre-training", "## Exact search", "## Targets"):
        assert heading in md
