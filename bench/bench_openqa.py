"""Benchmark: exact against approximate search at growing corpus sizes, passage encoding
on this CPU, and what DPR's 21M Wikipedia passages would cost.

Why: open-domain QA (NQ, TriviaQA) searches DPR's 21,015,324 passages, 64.6 GB as 768-d
float32. Before choosing between exact search over shards (retrieval/search.py) and an
approximate index (retrieval/index.py, its default settings) we want the speed, memory
and recall of both measured, and the encoding cost of the corpus projected.

Data: synthetic 768-d embeddings, L2-normalised float32, written as embedding shards
(retrieval/embeddings.save_embeddings, 250k rows each) in a temporary folder. They are
made to behave like real ones rather than like isotropic noise: a shared mean
direction, fine topics (one per 30 passages) and within-topic spread, all drawn in a
fixed random basis whose variance decays as a power law (dimension j has standard
deviation j^-0.3). These settings were picked so that at 3,000 passages (384-d, the
same generator, queries at 1x the spread) IVF recall per probed list, PQ recall and the
mean cosine between random passages came close to all-MiniLM-L6-v2 embeddings of 3,000
MS MARCO passages searched with 300 NQ questions (probing 8 of 64 lists: 0.74 synthetic
vs 0.69 real of the exact top 100; PQ48: 0.76 vs 0.74; cosine 0.05 vs 0.03).

A query is a corpus passage plus noise from the same distribution (4x a passage's own
spread), which at 100k passages puts its source passage in the exact top 20 / 100 for
about 73% / 84% of queries, near DPR's answer recall on NQ (78% / 85% at 21M): the
source's presence ("source hit@k") stands in for the open-domain metric (a question
counts when an answer passage is in the top k), beside the strict one, Recall@k against
exact (the share of the exact top k found).

Each measurement runs in its own process (peak RSS is its own): `generate` (shards and
queries), `exact` (search.exact_search over memory-mapped shards, top 100), `build`
(index.build_index with index.default_settings for the size; 64 training vectors per
list, as 1M for 16,384 lists at 21M), `search` (index.index_search with the stored
parameters, and re-scored exactly from the shards at the default depth) and `encode`
(all-MiniLM-L6-v2, retrieval.encode.encode_table, ~200 100-word Wikipedia passages from
../shared/data when present, else synthetic ones). The 21M projections scale the largest
measured size by the work each step does; GPU figures divide CPU time by an ASSUMED
speed ratio (--gpu-speedup), they are not measurements.

    python bench/bench_openqa.py --out bench/out [--sizes 100000,1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench_common import emit_result, minilm_path, peak_rss_mib, record_args, run_variant, utc_now
from bench_pretrain import _cpu_name, bert_base_params, param_counts

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "text" / "wikipedia-summaries" / "en.txt"
DIM = 768
SHARD_ROWS = 250_000
CHUNK_ROWS = 50_000
TOP_K = 100
HIT_KS = (20, 100)
PER_LIST = 64  # training vectors per IVF list: 1M for 16,384 lists at 21M
# The generator's settings (see the docstring).
SPECTRUM = 0.3
MEAN, TOPIC, SPREAD, QUERY_NOISE = 0.3, 1.0, 1.0, 4.0
PASSAGES_PER_TOPIC = 30
# DPR's open-domain QA: psgs_w100.tsv rows, NQ and TriviaQA test questions.
DPR_PASSAGES = 21_015_324
OPENQA_QUERIES = {"nq": 3_610, "trivia": 11_313}
DPR_TRAIN = 1_000_000  # training sample of the 21M index (build_index's default)


# --------------------------------------------------------------------------- data


def _basis(seed: int):
    import numpy as np

    rng = np.random.default_rng([seed, 0])
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    sigma = np.arange(1, DIM + 1, dtype=np.float64) ** -SPECTRUM
    sigma /= np.sqrt((sigma**2).sum())
    mean = rng.standard_normal(DIM)
    mean /= np.linalg.norm(mean)
    return (q * sigma).T.astype(np.float32), mean.astype(np.float32)


def synthetic_corpus(n: int, seed: int = 0):
    """Yield (start, block) of the n corpus vectors, CHUNK_ROWS at a time (seeded by
    chunk, so the vectors do not depend on how they are grouped into shards)."""
    import numpy as np

    basis, mean = _basis(seed)
    topics = max(1, n // PASSAGES_PER_TOPIC)
    centres = np.random.default_rng([seed, 1]).standard_normal((topics, DIM), dtype=np.float32)
    centres = (centres @ basis) * TOPIC + mean * MEAN
    for c, start in enumerate(range(0, n, CHUNK_ROWS)):
        m = min(CHUNK_ROWS, n - start)
        rng = np.random.default_rng([seed, 2, c])
        x = centres[rng.integers(0, topics, m)]
        x += (rng.standard_normal((m, DIM), dtype=np.float32) @ basis) * SPREAD
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x


def generate(work: Path, n: int, n_queries: int, seed: int = 0) -> dict:
    import numpy as np

    from contriever_repro.retrieval.embeddings import save_embeddings

    meta = {"model": "synthetic", "pooling": "mean", "l2_normalize": True,
            "score_function": "dot"}  # fmt: skip
    rng = np.random.default_rng([seed, 3])
    sources = np.sort(rng.choice(n, size=n_queries, replace=False))
    queries = np.empty((n_queries, DIM), dtype=np.float32)
    prefixes, shard, shard_start = [], [], 0
    basis, _mean = _basis(seed)

    def flush(end: int) -> None:
        prefix = work / f"corpus.{len(prefixes)}"
        ids = [f"p{i}" for i in range(shard_start, end)]
        save_embeddings(prefix, ids, np.concatenate(shard), {**meta, "side": "passage"})
        prefixes.append(str(prefix))

    for start, block in synthetic_corpus(n, seed):
        end = start + len(block)
        inside = (sources >= start) & (sources < end)
        queries[inside] = block[sources[inside] - start]
        shard.append(block)
        if end - shard_start >= SHARD_ROWS or end == n:
            flush(end)
            shard, shard_start = [], end
    queries += (rng.standard_normal(queries.shape, dtype=np.float32) @ basis) * QUERY_NOISE
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    qids = [f"q{i}" for i in range(n_queries)]
    save_embeddings(work / "queries", qids, queries, {**meta, "side": "query"})
    source_of = {q: f"p{s}" for q, s in zip(qids, sources.tolist(), strict=True)}
    (work / "sources.json").write_text(json.dumps(source_of))
    return {"shards": prefixes, "queries": str(work / "queries")}


# --------------------------------------------------------------------------- phases


def _source_hits(run, work: Path) -> dict:
    source_of = json.loads((work / "sources.json").read_text())
    rank = {
        (q, d): r
        for q, d, r in zip(run["query_id"], run["doc_id"], run["rank"], strict=True)
        if source_of[q] == d
    }
    ranks = [rank.get((q, d)) for q, d in source_of.items()]
    return {f"source_hit@{k}": sum(r is not None and r <= k for r in ranks) / len(ranks)
            for k in HIT_KS}  # fmt: skip


def phase_generate(work: Path, n: int, n_queries: int) -> dict:
    start = time.perf_counter()
    data = generate(work, n, n_queries)
    (work / "data.json").write_text(json.dumps(data))
    return {"generate_s": time.perf_counter() - start, "shards": len(data["shards"])}


def phase_exact(work: Path, n: int) -> dict:
    from contriever_repro.io import write_table
    from contriever_repro.retrieval.embeddings import load_embeddings
    from contriever_repro.retrieval.search import exact_search, load_shards

    data = json.loads((work / "data.json").read_text())
    qids, q, qmeta = load_embeddings(data["queries"], mmap=False)
    start = time.perf_counter()
    run = exact_search(qids, q, load_shards(data["shards"], qmeta), top_k=TOP_K, use_gpu=False)
    seconds = time.perf_counter() - start
    write_table(run, work / "exact.parquet", "run")
    return {
        "search_s": seconds,
        "queries_per_s": len(qids) / seconds,
        "memory_bytes_per_passage": DIM * 4,
        **_source_hits(run, work),
    }


def phase_build(work: Path, n: int) -> dict:
    from contriever_repro.retrieval.embeddings import load_embeddings
    from contriever_repro.retrieval.index import build_index, default_settings, save_index

    data = json.loads((work / "data.json").read_text())
    factory, params = default_settings(n, DIM)
    nlist = int(factory.split(",")[0][3:])
    shards = [load_embeddings(p)[:2] for p in data["shards"]]
    stats: dict = {}
    start = time.perf_counter()
    index, ids = build_index(shards, factory, train_size=PER_LIST * nlist, use_gpu=False,
                             stats=stats)  # fmt: skip
    seconds = time.perf_counter() - start
    save_index(index, ids, work / "index", factory=factory, train_size=PER_LIST * nlist,
               seed=0, search_params=params, embedding_meta=load_embeddings(data["queries"])[2],
               shards=[{"name": Path(p).name, "count": len(i)} for p, (i, _e)
                       in zip(data["shards"], shards, strict=True)])  # fmt: skip
    size = (work / "index.faiss").stat().st_size
    return {
        "factory": factory,
        "search_params": params,
        "nlist": nlist,
        "build_s": seconds,
        "index_bytes": size,
        "memory_bytes_per_passage": size / n,
        **stats,
    }


def phase_search(work: Path, n: int, depth: int) -> dict:
    from contriever_repro.io import read_table
    from contriever_repro.retrieval.embeddings import load_embeddings
    from contriever_repro.retrieval.index import index_search, load_index, recall_against_exact

    data = json.loads((work / "data.json").read_text())
    qids, q, _qmeta = load_embeddings(data["queries"], mmap=False)
    index, ids, meta = load_index(work / "index")
    exact = read_table(work / "exact.parquet", "run")
    out = {}
    shards = [load_embeddings(p)[:2] for p in data["shards"]]
    for name, rerank in (("index", None), ("index+rescore", shards)):
        start = time.perf_counter()
        run = index_search(index, ids, qids, q, TOP_K, meta["search_params"], use_gpu=False,
                           rerank_shards=rerank, rerank_depth=depth)  # fmt: skip
        seconds = time.perf_counter() - start
        out[name] = {
            "search_s": seconds,
            "queries_per_s": len(qids) / seconds,
            **{f"recall@{k}_vs_exact": recall_against_exact(run, exact, k) for k in HIT_KS},
            **_source_hits(run, work),
        }
    out["index+rescore"]["rescore_depth"] = depth
    return out


def synthetic_passages(n: int, seed: int = 0) -> tuple[list[str], str]:
    """~n 100-word passages: DPR's format (100-word pieces of Wikipedia articles) cut from
    ../shared/data's Wikipedia lead sections when present, else random vocabulary words."""
    import random

    rng = random.Random(seed)
    if WIKI.exists():
        words = WIKI.read_text(encoding="utf-8").split()
        pieces = [" ".join(words[i : i + 100]) for i in range(0, len(words) - 100, 100)]
        return rng.sample(pieces, min(n, len(pieces))), "Wikipedia lead sections, 100 words"
    from transformers import AutoTokenizer

    vocab = [w for w in AutoTokenizer.from_pretrained(minilm_path()).vocab if w.isalpha()]
    texts = [" ".join(rng.choice(vocab) for _ in range(100)) for _ in range(n)]
    return texts, "random MiniLM vocabulary words, 100 per passage"


def phase_encode(n_passages: int, threads: int) -> dict:
    import pandas as pd
    import torch
    from transformers import AutoConfig

    from contriever_repro.models.spec import ModelSpec, load_encoder
    from contriever_repro.retrieval.encode import encode_table, passage_texts

    torch.set_num_threads(threads)
    texts, what = synthetic_passages(n_passages)
    corpus = pd.DataFrame({"doc_id": [str(i) for i in range(len(texts))], "title": "",
                           "text": texts})  # fmt: skip
    spec = ModelSpec(name="minilm", source=minilm_path(), normalize=True,
                     max_passage_length=256, batch_size=64)  # fmt: skip
    tokenizer, model = load_encoder(spec)
    encode_table(corpus.head(64), spec, tokenizer, model, "passage")  # warm-up
    start = time.perf_counter()
    encode_table(corpus, spec, tokenizer, model, "passage")
    seconds = time.perf_counter() - start
    lengths = tokenizer(passage_texts(corpus, spec), truncation=True, max_length=256)
    tokens = sum(len(ids) for ids in lengths["input_ids"]) / len(texts)
    minilm = param_counts(AutoConfig.from_pretrained(minilm_path()))
    return {
        "passages": len(texts),
        "passage_source": what,
        "tokens_per_passage": tokens,
        "encode_s": seconds,
        "passages_per_s": len(texts) / seconds,
        "minilm_params_nonembed": minilm["n_params_nonembed"],
    }


def worker(phase: str, work: Path, n: int, args) -> None:
    import faiss

    faiss.omp_set_num_threads(args.threads)  # torch only in `encode`: search jobs never load it
    if phase == "generate":
        result = phase_generate(work, n, args.queries)
    elif phase == "exact":
        result = phase_exact(work, n)
    elif phase == "build":
        result = phase_build(work, n)
    elif phase == "search":
        result = phase_search(work, n, args.rerank_depth)
    else:
        result = phase_encode(args.passages, args.threads)
    result["peak_rss_mib"] = peak_rss_mib()
    emit_result(result)


# --------------------------------------------------------------------------- projection


def project(sizes: list[dict], encode: dict, speedup: float) -> dict:
    """21M passages, NQ + TriviaQA test questions, from the largest measured size."""
    from contriever_repro.retrieval.index import DEFAULT_FACTORY, DEFAULT_RERANK_DEPTH

    m = max(sizes, key=lambda s: s["n"])
    n, nq = m["n"], m["queries"]
    queries = sum(OPENQA_QUERIES.values())
    factory, nlist = m["build"]["factory"], m["build"]["nlist"]
    full_nlist = int(DEFAULT_FACTORY.split(",")[0][3:])
    scale = DPR_PASSAGES * queries / (n * nq)  # query x passage pairs
    exact_s = m["exact"]["search_s"] * scale
    scan_s = m["index"]["search_s"] * scale
    rescore_s = (m["index+rescore"]["search_s"] - m["index"]["search_s"]) / nq * queries
    # k-means: iterations x sample x lists; adding: passages x lists (assignment).
    train_s = m["build"]["train_s"] * (DPR_TRAIN * full_nlist) / (m["build"]["train_vectors"]
                                                                  * nlist)  # fmt: skip
    add_s = m["build"]["add_s"] * (DPR_PASSAGES * full_nlist) / (n * nlist)
    contriever = bert_base_params()["n_params_nonembed"]
    flop_ratio = contriever / encode["minilm_params_nonembed"]
    minilm_s = DPR_PASSAGES / encode["passages_per_s"]
    rows = {
        "encode 21M passages, all-MiniLM-L6-v2 (measured rate)": minilm_s,
        f"encode 21M passages, Contriever/BERT-base (x{flop_ratio:.1f} FLOPs per token)": (
            minilm_s * flop_ratio
        ),
        f"exact search, {queries:,} NQ+TQA questions": exact_s,
        f"build {DEFAULT_FACTORY}: train on {DPR_TRAIN:,}": train_s,
        f"build {DEFAULT_FACTORY}: add 21M": add_s,
        f"search {DEFAULT_FACTORY}, every list, {queries:,} questions": scan_s,
        f"re-score the best {DEFAULT_RERANK_DEPTH} from the shards (page cache)": rescore_s,
    }
    return {
        "from_size": n,
        "measured_factory": factory,
        "passages": DPR_PASSAGES,
        "questions": queries,
        "gpu_speedup_assumed": speedup,
        "cpu_hours": {k: v / 3600 for k, v in rows.items()},
        "gpu_hours_assumed": {k: v / 3600 / speedup for k, v in rows.items()},
        "memory_gb": {
            "flat float32 (exact)": DPR_PASSAGES * DIM * 4 / 1e9,
            f"{DEFAULT_FACTORY} (bytes per passage as measured, centroids rescaled)": (
                DPR_PASSAGES * (m["build"]["memory_bytes_per_passage"] - nlist * DIM * 4 / n)
                + full_nlist * DIM * 4
            )
            / 1e9,
        },
    }


# --------------------------------------------------------------------------- report


def report(payload: dict) -> str:
    lines = [
        "# Open-domain QA search: exact vs approximate index",
        "",
        f"{payload['date']}; CPU: {payload['machine']['cpu']}, "
        f"{payload['args']['threads']} threads; faiss {payload['machine']['faiss']}; "
        f"{payload['args']['queries']} queries, top {TOP_K}; synthetic 768-d embeddings "
        "(see the script's docstring).",
        "",
        "| passages | method | build s | index MB | bytes/passage | queries/s | "
        "R@20 vs exact | R@100 vs exact | source hit@20 | source hit@100 | peak RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in payload["sizes"]:
        b = s["build"]
        lines.append(
            f"| {s['n']:,} | exact (flat, shards) | - | - | {DIM * 4} | "
            f"{s['exact']['queries_per_s']:.1f} | 1 | 1 | {s['exact']['source_hit@20']:.3f} | "
            f"{s['exact']['source_hit@100']:.3f} | {s['exact']['peak_rss_mib']:.0f} |"
        )
        for name in ("index", "index+rescore"):
            r = s[name]
            label = b["factory"] + (
                f" + exact re-score of {r['rescore_depth']}" if "rescore_depth" in r else ""
            )
            build = f"{b['build_s']:.1f}" if name == "index" else "-"
            lines.append(
                f"| {s['n']:,} | {label} | {build} | {b['index_bytes'] / 2**20:.1f} | "
                f"{b['memory_bytes_per_passage']:.0f} | {r['queries_per_s']:.1f} | "
                f"{r['recall@20_vs_exact']:.3f} | {r['recall@100_vs_exact']:.3f} | "
                f"{r['source_hit@20']:.3f} | {r['source_hit@100']:.3f} | "
                f"{s['search_peak_rss_mib']:.0f} |"
            )
    e = payload["encode"]
    p = payload["projection"]
    lines += [
        "",
        "Build peak RSS is in the JSON (`build.peak_rss_mib`); the search's peak RSS counts "
        "the shard pages the re-scoring touched (memory-mapped, reclaimable).",
        "",
        f"Encoding: all-MiniLM-L6-v2, {e['passages']} passages ({e['passage_source']}, "
        f"{e['tokens_per_passage']:.0f} tokens each), fp32: "
        f"**{e['passages_per_s']:.1f} passages/s** on this CPU.",
        "",
        f"## Projection to DPR's {p['passages']:,} passages and {p['questions']:,} questions",
        "",
        f"Scaled from the {p['from_size']:,}-passage measurements by the work each step does "
        "(searches: query x passage pairs; k-means: sample x lists; adding: passages x "
        "lists; encoding: passages, and FLOPs per token for BERT-base). GPU column: CPU "
        f"time / {p['gpu_speedup_assumed']:g}, an **ASSUMED** one-GPU / this-CPU speed "
        "ratio (--gpu-speedup), not a measurement; the fast-scan index has no GPU version.",
        "",
        "| step | CPU hours (this machine) | one GPU, hours (ASSUMED ratio) |",
        "|---|---:|---:|",
    ]
    for k, v in p["cpu_hours"].items():
        lines.append(f"| {k} | {v:,.2f} | {p['gpu_hours_assumed'][k]:,.3f} |")
    lines += ["", "| memory for 21M passages | GB |", "|---|---:|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in p["memory_gb"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="corpus sizes, comma-separated")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--passages", type=int, default=200, help="passages encoded")
    ap.add_argument("--rerank-depth", type=int, default=None, help="default: index default")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument(
        "--gpu-speedup",
        type=float,
        default=100.0,
        help="ASSUMED speed ratio of one GPU to this CPU, for the GPU projection",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rerank_depth is None:
        from contriever_repro.retrieval.index import DEFAULT_RERANK_DEPTH

        args.rerank_depth = DEFAULT_RERANK_DEPTH
    if args.phase:
        worker(args.phase, args.work, args.size, args)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes or min(sizes) <= args.queries or args.queries < 1:
        sys.exit("every size must exceed --queries (queries are perturbed corpus passages)")

    def run(phase: str, work: Path, n: int) -> dict:
        cmd = [sys.executable, __file__, "--phase", phase, "--work", str(work), "--size", str(n)]
        cmd += ["--queries", str(args.queries), "--passages", str(args.passages)]
        cmd += ["--threads", str(args.threads), "--rerank-depth", str(args.rerank_depth)]
        result = run_variant(f"{phase} ({n})", cmd)
        print(f"{phase} {n:,}: {json.dumps(result)[:200]}", flush=True)
        return result

    start = time.perf_counter()
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench_openqa_") as tmp:
            work = Path(tmp)
            gen = run("generate", work, n)
            exact = run("exact", work, n)
            build = run("build", work, n)
            search = run("search", work, n)
            results.append(
                {
                    "n": n,
                    "queries": args.queries,
                    "generate": gen,
                    "exact": exact,
                    "build": build,
                    "index": search["index"],
                    "index+rescore": search["index+rescore"],
                    "search_peak_rss_mib": search["peak_rss_mib"],
                }
            )
    encode = run("encode", Path(tempfile.gettempdir()), 0)
    import faiss
    import numpy
    import torch

    payload = {
        "date": utc_now(),
        "args": record_args(args, leave_out=("phase", "work", "size", "out")),
        "machine": {
            "cpu": _cpu_name(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "numpy": numpy.__version__,
            "torch": torch.__version__,
        },
        "data": {
            "embeddings": f"synthetic {DIM}-d, L2-normalised float32 (see docstring)",
            "spectrum_exponent": SPECTRUM,
            "passages_per_topic": PASSAGES_PER_TOPIC,
            "query_noise": QUERY_NOISE,
            "shard_rows": SHARD_ROWS,
        },
        "wall_s": time.perf_counter() - start,
        "sizes": results,
        "encode": encode,
        "projection": project(results, encode, args.gpu_speedup),
    }
    md = report(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_openqa.json").write_text(json.dumps(payload, indent=2))
    (args.out / "bench_openqa.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
