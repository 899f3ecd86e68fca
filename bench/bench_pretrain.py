"""Benchmark: contrastive (MoCo) pre-training throughput on this CPU, and a GPU-hours estimate.

Why: the paper's run is 500k steps of BERT-base on 32 GPUs; before asking for GPU time
we want the per-step cost of our training loop measured (and its data pipeline shown
not to be the bottleneck), and the paper's compute derived from its FLOPs rather than
guessed.

Variants (each in its own subprocess, so peak memory is its own and no state leaks):
the demo's tiny BERT (demo-world corpus) and all-MiniLM-L6-v2 (10k Wikipedia leads,
each tokenised with its model's tokenizer), fp32 and bf16 autocast, MoCo (queue 4096
for tiny, 8192 for MiniLM), 32 pairs per step, 256-token chunks, crops of 5-50% plus
10% token deletion (the paper's recipe), DataLoader workers 2, subnormals flushed to zero
as the training loop does by default; plus workers 0 for the data-loading check, and fp32 with
subnormals left on (`flush_denormal: false`) for what that mode is worth (see VARIANTS). Each runs
`pretrain(..., stop_at=warmup + steps)` with `log_every = 1`: the first `warmup`
records (first allocations, DataLoader start-up) are left out and the others, merged
exactly (each is a per-step average), are the measured window; one record per step
also gives the spread of the step time. Timed by the training loop itself: data (waiting for
the batch), forward, backward, optimiser; "other" is the rest of the step.

Output: bench_pretrain.json and bench_pretrain.md (tables + the GPU-hours estimate).

    python bench/bench_pretrain.py --out bench/out [--steps 10] [--warmup 3] [--variants a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from bench_common import PAPER_PRETRAINING as PAPER
from bench_common import cpu_name as _cpu_name
from bench_common import (
    emit_result,
    gemm_flop_per_s,
    minilm_path,
    peak_rss_mib,
    record_args,
    repo_path,
    run_variant,
    utc_now,
)

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "text" / "wikipedia-summaries" / "en.txt"
TINY = dict(  # config/demo.yaml tiny_berts.tiny-bert-init
    vocab_size=4000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, seed=0
)
DEMO_LINES = 5000  # config/demo.yaml demo_world.pretraining_lines
BATCH = 32
CHUNK = 256
QUEUE = {"tiny": 4096, "minilm": 8192}


class Variant(NamedTuple):
    model: str
    precision: str
    workers: int  # DataLoader workers
    ftz: bool = True  # flush subnormals to zero (the training loop's default)
    unpadded: bool = False  # encoders on the real tokens only (models/packing.py)


VARIANTS = {
    "tiny-fp32": Variant("tiny", "fp32", 2),
    "tiny-bf16": Variant("tiny", "bf16", 2),
    "tiny-fp32-w0": Variant("tiny", "fp32", 0),
    "tiny-fp32-unpadded": Variant("tiny", "fp32", 2, unpadded=True),
    "minilm-fp32": Variant("minilm", "fp32", 2),
    "minilm-bf16": Variant("minilm", "bf16", 2),
    "minilm-fp32-w0": Variant("minilm", "fp32", 0),
    "minilm-fp32-unpadded": Variant("minilm", "fp32", 2, unpadded=True),
    # Subnormals left on: fp32 backward on a CPU stalls on them (MoCo's softmax over
    # the queue at τ = 0.05 makes tiny probabilities); what flush_denormal buys.
    "minilm-fp32-denormals": Variant("minilm", "fp32", 2, ftz=False),
}
PARTS = ("data", "forward", "backward", "optimizer")

# The GPU the paper's run (bench_common.PAPER_PRETRAINING) is costed on.
A100_PEAK = {  # dense TFLOP/s, A100 SXM datasheet
    "bf16": 312.0,
    "tf32": 156.0,
    "fp32": 19.5,  # plain fp32: PyTorch disables TF32 matmuls by default since 1.12
}
MFUS = (0.3, 0.5)


# --------------------------------------------------------------------------- data


def prepare(work: Path, models: set[str]) -> dict:
    """Models and token shards for the variants (made once, shared by the subprocesses)."""
    from contriever_repro.training.loop import load_tokenizer
    from contriever_repro.training.shards import tokenize_text_file

    out = {}
    if "tiny" in models:
        from contriever_repro.data.demo_world import generate_pretraining_corpus
        from contriever_repro.models.tiny_bert import build_tiny_bert

        text = generate_pretraining_corpus(work / "demo" / "text.txt", DEMO_LINES, seed=0)
        model = build_tiny_bert(
            text.read_text(encoding="utf-8").splitlines(), work / "tiny", **TINY
        )
        shards = work / "shards" / "tiny"
        shards.mkdir(parents=True)
        tokenize_text_file(text, load_tokenizer(model), shards / "part-000")
        out["tiny"] = {"init": str(model), "shards": str(shards), "text": "demo world"}
    if "minilm" in models:
        model = minilm_path()
        shards = work / "shards" / "minilm"
        shards.mkdir(parents=True)
        tokenize_text_file(WIKI, load_tokenizer(model), shards / "part-000")
        out["minilm"] = {"init": model, "shards": str(shards), "text": str(WIKI)}
    return out


# --------------------------------------------------------------------------- one variant


def _config(variant: Variant, init: str, warmup: int, steps: int):
    from contriever_repro.training.config import PretrainConfig

    spec = {
        "init": init,
        "tokenizer": init,
        "sources": ["bench"],
        "objective": "moco",
        "queue_size": QUEUE[variant.model],
        "chunk_length": CHUNK,
        "batch_size_per_device": BATCH,
        "precision": variant.precision,
        "num_workers": variant.workers,
        "flush_denormal": variant.ftz,
        "unpadded": variant.unpadded,
        "nodes": 1,
        "gpus_per_node": 1,
        # A schedule longer than the run so the lr is the paper's warm-up ramp, not 0.
        "steps": 100 * (warmup + steps),
        "warmup_steps": 10 * (warmup + steps),
        "log_every": 1,  # one record per step: merged exactly below, and shows the spread
        "checkpoint_every": 10**9,  # only the final (untimed) checkpoint
    }
    return PretrainConfig.from_dict(f"bench-{variant.model}", spec)


def _merge(records: list[dict], first_step: int) -> dict:
    """Merge the metrics records after `first_step` exactly (each is a window average)."""
    window, prev, out = [], first_step, {}
    for r in records:
        if r["step"] > first_step:
            window.append((r, r["step"] - prev))
            prev = r["step"]
    n = sum(k for _, k in window)
    seconds = sum(r["step_s"] * k for r, k in window)
    out["steps"] = n
    out["seconds"] = seconds
    out["step_s"] = seconds / n
    out["seq_per_s"] = sum(r["seq_per_s"] * r["step_s"] * k for r, k in window) / seconds
    out["tok_per_s"] = sum(r["tok_per_s"] * r["step_s"] * k for r, k in window) / seconds
    for part in PARTS:
        out[f"{part}_s"] = sum(r[f"{part}_s"] * k for r, k in window) / n
    out["other_s"] = out["step_s"] - sum(out[f"{p}_s"] for p in PARTS)
    out["per_step"] = {f"{p}_s": [r[f"{p}_s"] for r, _ in window] for p in ("step", *PARTS)}
    warm = [r["step_s"] for r in records if r["step"] <= first_step]
    out["warmup_step_s"] = sum(warm) / len(warm)
    out["loss"] = window[-1][0]["loss"]
    out["accuracy"] = window[-1][0]["accuracy"]
    out["peak_mem_mb"] = max(r["peak_mem_mb"] for r, _ in window)
    return out


def _padding(cfg, init: str, shards: str, first: int, n: int) -> dict:
    """Real vs padded tokens of the measured batches, rebuilt exactly (batch b is a pure
    function of the seed): padded encoders compute on the padded width, unpadded ones
    on the real tokens."""
    from contriever_repro.training.loop import (
        build_batches,
        build_sampler,
        build_views,
        load_tokenizer,
        open_sources,
    )

    tok = load_tokenizer(init)
    sampler = build_sampler(cfg, open_sources(cfg, {"bench": shards}, tok, 0, 1))
    batches = build_batches(cfg, sampler, build_views(cfg, tok), tok)
    real = padded = 0
    for b in range(first, first + n):
        batch = batches.batch(b)
        for side in ("q", "k"):
            real += int(batch[f"{side}_attention_mask"].sum())
            padded += batch[f"{side}_input_ids"].numel()
    return {"real_tokens_per_step": real / n, "padded_tokens_per_step": padded / n}


def _cpu_seconds(children: bool = False) -> float:
    """CPU seconds of this process (and of its reaped children: DataLoader workers)."""
    who = [resource.RUSAGE_SELF] + ([resource.RUSAGE_CHILDREN] if children else [])
    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime for w in who)


def _machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat), to measure contention."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(max_wait: float, busy_cores: float = 0.3, sample: float = 3.0) -> float:
    """Wait (at most `max_wait` s) until other processes use < `busy_cores` cores, so a
    shared machine does not inflate the timings; returns the last busy level seen."""
    deadline = time.monotonic() + max_wait
    while True:
        before = _machine_cpu_seconds()
        time.sleep(sample)
        busy = (_machine_cpu_seconds() - before) / sample
        if busy < busy_cores or time.monotonic() >= deadline:
            return busy


def worker(variant: str, data: dict, warmup: int, steps: int, threads: int, work: Path) -> None:
    import torch
    from transformers import AutoConfig

    from contriever_repro.training.loop import flush_denormals, pretrain, read_metrics

    setting = VARIANTS[variant]
    model, precision = setting.model, setting.precision
    init, shards = data[model]["init"], data[model]["shards"]
    cfg = _config(setting, init, warmup, steps)
    flush_denormals(cfg)  # as scripts/pretrain.py: before the thread pool exists
    torch.set_num_threads(threads)
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{variant}-", dir=work))
    machine_before, own_before = _machine_cpu_seconds(), _cpu_seconds(children=True)
    start = time.perf_counter()
    pretrain(cfg, init, {"bench": shards}, run_dir, device="cpu", stop_at=warmup + steps)
    wall = time.perf_counter() - start
    own = _cpu_seconds(children=True) - own_before
    others = _machine_cpu_seconds() - machine_before - own
    result = _merge(read_metrics(run_dir), warmup)
    result.update(_padding(cfg, init, shards, warmup, steps))
    params = param_counts(AutoConfig.from_pretrained(init))
    gemm = "bf16" if precision == "bf16" else "fp32"
    result.update(
        variant=variant,
        model=model,
        precision=precision,
        num_workers=setting.workers,
        flush_denormal=setting.ftz,
        unpadded=setting.unpadded,
        queue_size=cfg.queue_size,
        batch_size=cfg.batch_size_per_device,
        threads=threads,
        warmup_steps_excluded=warmup,
        wall_s=wall,
        # Other processes on the machine slow a 2-thread run a lot: keep the evidence.
        cores_used_self=own / wall,
        cores_used_others=max(others, 0.0) / wall,
        n_params=params["n_params"],
        n_params_nonembed=params["n_params_nonembed"],
        gemm_flop_per_s=gemm_flop_per_s(gemm, 2048),
        peak_rss_mib=peak_rss_mib(),
        worker_peak_rss_mib=peak_rss_mib(resource.RUSAGE_CHILDREN),
    )
    emit_result(result)


# --------------------------------------------------------------------------- FLOPs model


def param_counts(config) -> dict:
    """Parameters of a BERT encoder without pooler (as training.loop.load_init_model builds it),
    all and non-embedding, from its config alone: built on the meta device."""
    import torch
    from transformers import BertModel

    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for p in model.embeddings.parameters())
    return {"n_params": total, "n_params_nonembed": total - embed, "hidden": config.hidden_size}


def bert_base_params() -> dict:
    from transformers import BertConfig

    return param_counts(BertConfig())  # the defaults are bert-base-uncased


def view_length_law(n: int, rmin: float, rmax: float, p: float, grid: int = 1_000_000) -> float:
    """Mean view length: E[max(1, int(n·r))]·(1 − p) + 2 specials, r ~ U(rmin, rmax)."""
    import numpy as np

    r = rmin + (rmax - rmin) * (np.arange(grid) + 0.5) / grid
    return float(np.maximum(1, np.floor(n * r)).mean() * (1 - p) + 2)


def padded_width(per_gpu: int, n: int = 256, trials: int = 2000) -> float:
    """Mean padded width of a per-GPU batch of views (pad to the longest), by simulation
    of the library's own view maker (token values do not matter, only lengths)."""
    import numpy as np

    from contriever_repro.training.augment import ViewMaker

    views = ViewMaker(cls_id=1, sep_id=2)
    rng = np.random.default_rng(0)
    chunk = np.arange(3, 3 + n)
    widths = [max(len(views(chunk, rng)[0]) for _ in range(per_gpu)) for _ in range(trials)]
    return float(np.mean(widths))


def estimate(results: list[dict]) -> dict:
    """GPU-hours of the paper's run from FLOPs = (6 + 2)·N_nonembed·tokens per view side,
    and the same formula checked against the measured MiniLM steps on this CPU."""
    bert = bert_base_params()
    n = bert["n_params_nonembed"]
    mean_len = view_length_law(
        PAPER["chunk_length"], PAPER["ratio_min"], PAPER["ratio_max"], PAPER["delete_p"]
    )
    width = padded_width(PAPER["per_gpu_batch"], PAPER["chunk_length"])
    side = {  # tokens per step and side (queries; keys): 2048 views each
        "useful (mean view length)": PAPER["global_batch"] * mean_len,
        "executed (padded to the per-GPU longest)": PAPER["global_batch"] * width,
    }
    queue_flops = 2 * 2 * PAPER["global_batch"] * bert["hidden"] * PAPER["queue"]
    rows = []
    for label, tokens in side.items():
        flops_step = 6 * n * tokens + 2 * n * tokens
        total = flops_step * PAPER["steps"]
        for peak_name, peak in A100_PEAK.items():
            for mfu in MFUS:
                seconds = total / (peak * 1e12 * mfu)
                rows.append(
                    {
                        "tokens": label,
                        "tokens_per_step": 2 * tokens,
                        "flops_per_step": flops_step,
                        "total_pflop": total / 1e15,
                        "precision": peak_name,
                        "peak_tflops": peak,
                        "mfu": mfu,
                        "gpu_hours": seconds / 3600,
                        "days_on_32_gpus": seconds / PAPER["gpus"] / 86400,
                    }
                )
    executed_step = 8 * n * side["executed (padded to the per-GPU longest)"]
    useful_step = 8 * n * side["useful (mean view length)"]  # what unpadded encoders run
    checks = []
    for r in results:
        if r["model"] != "minilm":
            continue
        real = 8 * r["n_params_nonembed"] * r["real_tokens_per_step"] / 2
        # what the encoders computed on: unpadded ones, the real tokens only
        tokens = r["real_tokens_per_step"] if r.get("unpadded") else r["padded_tokens_per_step"]
        executed = 8 * r["n_params_nonembed"] * tokens / 2
        paper_step = useful_step if r.get("unpadded") else executed_step
        checks.append(
            {
                "variant": r["variant"],
                "n_params_nonembed": r["n_params_nonembed"],
                "measured_tokens_per_view": r["tok_per_s"] / r["seq_per_s"],
                "real_flops_per_step": real,
                "padded_flops_per_step": executed,
                "useful_flop_per_s": real / r["step_s"],
                "executed_flop_per_s": executed / r["step_s"],
                "gemm_flop_per_s": r["gemm_flop_per_s"],
                "cpu_mfu": executed / r["step_s"] / r["gemm_flop_per_s"],
                "paper_step_on_this_cpu_s": paper_step / (executed / r["step_s"]),
            }
        )
    return {
        "bert_base": bert,
        "mean_view_length_law": mean_len,
        "mean_padded_width_per_gpu_batch": width,
        "queue_logit_flops_per_step": queue_flops,
        "queue_share": queue_flops / (8 * n * side["useful (mean view length)"]),
        "attention_share_mean_len": mean_len / (6 * bert["hidden"]),
        "rows": rows,
        "minilm_checks": checks,
    }


# --------------------------------------------------------------------------- report


def _pct(r: dict, part: str) -> str:
    return f"{1000 * r[f'{part}_s']:.0f} ({100 * r[f'{part}_s'] / r['step_s']:.0f}%)"


def report(results: list[dict], est: dict, args, wall: float, waited: float, date: str) -> str:
    lines = [
        f"# Pre-training throughput (MoCo, {_cpu_name()}, {args.threads} torch threads)",
        "",
        f"{date}. {args.steps} measured steps after {args.warmup} excluded warm-up steps; "
        f"{BATCH} pairs per step, chunks of {CHUNK}, crop 5-50% + delete 10%; queue "
        f"{QUEUE['tiny']} (tiny) / {QUEUE['minilm']} (MiniLM). seq/s counts both views "
        "of a pair (as the training loop does); tok/s counts non-padding tokens. Step: mean "
        "(min-max over steps); parts: ms per step (% of step). Peak RSS: the training "
        "process (a DataLoader worker peaks at a few hundred MiB more, see the JSON). "
        "Loss / accuracy: last step (random lr-warm-up start: a sanity check only, "
        "finite and accuracy above chance). Cores: CPU-seconds per second during the "
        "pretrain call, of the benchmark (trainer + workers) / of other processes.",
        "",
        "| variant | workers | seq/s | tok/s | step ms (min-max) | data | forward | backward "
        "| optimizer | other | peak RSS MiB | loss / acc | bf16 speed-up vs fp32 "
        "| cores: bench / others |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {r["variant"]: r for r in results}
    for r in results:
        ratio = "-"
        fp32 = by.get(f"{r['model']}-fp32")
        if r["precision"] == "bf16" and fp32:
            ratio = f"{fp32['step_s'] / r['step_s']:.2f}x"
        steps = r["per_step"]["step_s"]
        lines.append(
            f"| {r['variant']} | {r['num_workers']} | {r['seq_per_s']:.1f} | "
            f"{r['tok_per_s']:.0f} | {1000 * r['step_s']:.0f} "
            f"({1000 * min(steps):.0f}-{1000 * max(steps):.0f}) | "
            + " | ".join(_pct(r, p) for p in (*PARTS, "other"))
            + f" | {r['peak_rss_mib']:.0f} | {r['loss']:.2f} / {r['accuracy']:.2f} | {ratio} | "
            f"{r['cores_used_self']:.2f} / {r['cores_used_others']:.2f} |"
        )
    for r in results:
        ftz = by.get(r["variant"].removesuffix("-denormals"))
        if r["variant"].endswith("-denormals") and ftz:
            lines += [
                "",
                f"Denormals: with subnormals left on ({r['variant']}, `flush_denormal: "
                f"false`) backward takes {1000 * r['backward_s']:.0f} ms per step (steps "
                f"from {1000 * min(r['per_step']['step_s']):.0f} to "
                f"{1000 * max(r['per_step']['step_s']):.0f} ms); flushed to zero as "
                f"the training loop does by default ({ftz['variant']}) it takes "
                f"{1000 * ftz['backward_s']:.0f} ms and the step is "
                f"{r['step_s'] / ftz['step_s']:.2f}x faster (last loss {ftz['loss']:.4f} vs "
                f"{r['loss']:.4f}). fp32 arithmetic on subnormal numbers (from the softmax "
                "over the queue at τ = 0.05) is slow on x86 CPUs; GPUs flush them anyway.",
            ]
    for r in results:
        padded = by.get(r["variant"].removesuffix("-unpadded"))
        if r.get("unpadded") and padded:
            lines += [
                "",
                f"Unpadded ({r['variant']}, `unpadded: true`, models/packing.py): the "
                f"encoders compute on {r['real_tokens_per_step']:,.0f} real tokens per step "
                f"instead of {padded['padded_tokens_per_step']:,.0f} padded ones "
                f"({padded['padded_tokens_per_step'] / r['real_tokens_per_step']:.2f}x); the "
                f"step takes {1000 * r['step_s']:.0f} ms against {1000 * padded['step_s']:.0f}"
                f" ms padded (speed-up {padded['step_s'] / r['step_s']:.2f}x; forward "
                f"{padded['forward_s'] / r['forward_s']:.2f}x, backward "
                f"{padded['backward_s'] / r['backward_s']:.2f}x). Last loss "
                f"{r['loss']:.4f} vs {padded['loss']:.4f} (dropout draws differ).",
            ]
    busy = [r["variant"] for r in results if r["cores_used_others"] > 0.2]
    if busy:
        lines += [
            "",
            f"WARNING: other processes used CPU during {', '.join(busy)} (more than 0.2 of "
            f"the {os.cpu_count()} cores on average): with {args.threads} torch threads on "
            f"{os.cpu_count()} cores every parallel op then waits for a descheduled thread, "
            "so those times are inflated by contention and are upper bounds.",
        ]
    lines += ["", "## Data loading (share of step time)", ""]
    lines += ["| variant | workers | data ms | step ms | data % | < 10%? |"]
    lines += ["|---|---:|---:|---:|---:|---|"]
    for r in results:
        share = r["data_s"] / r["step_s"]
        lines.append(
            f"| {r['variant']} | {r['num_workers']} | {1000 * r['data_s']:.1f} | "
            f"{1000 * r['step_s']:.0f} | {100 * share:.1f}% | {'yes' if share < 0.1 else 'NO'} |"
        )
    lines += [
        "",
        "With workers the data time is the wait for a ready batch plus its transfer from "
        "the worker; with 0 workers it is the making of the batch (sampling, crops, "
        "deletion, padding) in the training process.",
        "",
        *_estimate_lines(est),
        "",
        f"Total benchmark wall time: {wall:.0f} s ({waited:.0f} s of it waiting for an idle CPU).",
    ]
    return "\n".join(lines) + "\n"


def _estimate_lines(est: dict) -> list[str]:
    bert = est["bert_base"]
    n = bert["n_params_nonembed"]
    ratio = est["mean_padded_width_per_gpu_batch"] / est["mean_view_length_law"]
    lines = [
        "## GPU-hours of the paper's run (500k steps, 2048 pairs/step, BERT-base, MoCo)",
        "",
        "FLOPs per step = 6·N·T_q (query encoder, forward + backward) + 2·N·T_k (key "
        "encoder, forward only), N = non-embedding parameters (an embedding look-up is "
        f"no matmul): N = {n / 1e6:.1f}M of {bert['n_params'] / 1e6:.1f}M for "
        "bert-base-uncased without pooler (counted from its config). T_q = T_k = 2048 "
        "views x tokens per view. Mean view length from the crop law, "
        "E[max(1, int(256·r))]·(1 − 0.1) + 2 with r ~ U(0.05, 0.5): "
        f"{est['mean_view_length_law']:.1f} tokens. Views are padded to the longest in "
        "each GPU's batch of 64 (here and in the reference code) and the encoder computes "
        "on the padding: mean padded width "
        f"{est['mean_padded_width_per_gpu_batch']:.1f} tokens (simulated with the "
        f"library's view maker), so executed FLOPs are {ratio:.2f}x the useful ones. "
        "Neglected: attention-score FLOPs (≈ T/(6·d) of the dense ones: "
        f"{100 * est['attention_share_mean_len']:.1f}% at the mean length, "
        f"{100 * est['attention_share_mean_len'] * ratio:.1f}% padded), the MoCo logits "
        f"against the 131072-key queue ({100 * est['queue_share']:.1f}%), the momentum "
        "update and AdamW (O(N) per step, memory-bound). A100 dense peaks: bf16 312, "
        "TF32 156, plain fp32 19.5 TFLOP/s (the reference trained in fp32, and PyTorch "
        "leaves TF32 matmuls off by default since 1.12). MFU = achieved / peak, assumed.",
        "",
        "| FLOPs counted | tokens/step | PFLOP total | A100 peak TFLOP/s | MFU "
        "| GPU-hours | days on 32 GPUs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in est["rows"]:
        lines.append(
            f"| {r['tokens']} | {r['tokens_per_step']:,.0f} | {r['total_pflop']:,.0f} | "
            f"{r['precision']} {r['peak_tflops']:g} | {100 * r['mfu']:.0f}% | "
            f"{r['gpu_hours']:,.0f} | {r['days_on_32_gpus']:.2f} |"
        )
    checks = est["minilm_checks"]
    if checks:
        lines += [
            "",
            "Check of the formula on the measured MiniLM steps (N = "
            f"{checks[0]['n_params_nonembed'] / 1e6:.2f}M non-embedding; law "
            f"{est['mean_view_length_law']:.1f} tokens per view): FLOPs per step from the "
            "formula on the measured batches' real and padded tokens, divided by the "
            "measured step time, against a 2048² matmul in the same process and precision "
            "(the CPU's practical peak; executed / matmul is an MFU on this CPU).",
            "",
            "| variant | tokens/view measured | GFLOP/step useful / executed | GFLOP/s "
            "useful / executed | matmul GFLOP/s | CPU MFU | paper step here |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in checks:
            lines.append(
                f"| {c['variant']} | {c['measured_tokens_per_view']:.1f} | "
                f"{c['real_flops_per_step'] / 1e9:.0f} / {c['padded_flops_per_step'] / 1e9:.0f}"
                f" | {c['useful_flop_per_s'] / 1e9:.1f} / {c['executed_flop_per_s'] / 1e9:.1f}"
                f" | {c['gemm_flop_per_s'] / 1e9:.0f} | {100 * c['cpu_mfu']:.0f}% | "
                f"{c['paper_step_on_this_cpu_s'] / 60:.0f} min |"
            )
    return lines


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    # 10 + 3 keeps the default run near 6 minutes on 2 idle cores (MiniLM fp32: ~5 s/step)
    ap.add_argument("--steps", type=int, default=10, help="measured steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="excluded warm-up steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each variant, wait up to this many seconds for other processes to "
        "leave the CPU idle (a shared machine inflates the timings)",
    )
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        worker(
            args.variant, json.loads(args.data), args.warmup, args.steps, args.threads, args.work
        )
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.steps < 1 or args.warmup < 1:
        sys.exit(f"unknown variants {unknown} (known: {list(VARIANTS)}), or steps/warmup < 1")

    start = time.perf_counter()
    results, waited = [], 0.0
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        work = Path(tmp)
        data = prepare(work, {VARIANTS[v].model for v in variants})
        print(f"data prepared in {time.perf_counter() - start:.0f} s", flush=True)
        for variant in variants:
            if args.wait_idle > 0:
                t = time.perf_counter()
                wait_until_idle(args.wait_idle)
                waited += time.perf_counter() - t
            cmd = [sys.executable, __file__, "--variant", variant, "--data", json.dumps(data)]
            cmd += ["--work", str(work), "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
            result = run_variant(variant, cmd)
            result["data_source"] = repo_path(data[result["model"]]["text"])
            print(
                f"{variant}: {1000 * result['step_s']:.1f} ms/step, "
                f"data {100 * result['data_s'] / result['step_s']:.1f}%, "
                f"process {result['wall_s']:.0f} s",
                flush=True,
            )
            results.append(result)
    est = estimate(results)
    wall = time.perf_counter() - start
    date = utc_now()
    md = report(results, est, args, wall, waited, date)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": date,
        "args": record_args(args, leave_out=("variant", "data")),
        "cpu": _cpu_name(),
        "wall_s": wall,
        "waited_for_idle_s": waited,
        "results": results,
        "estimate": est,
    }
    (args.out / "bench_pretrain.json").write_text(json.dumps(payload, indent=2))
    (args.out / "bench_pretrain.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
