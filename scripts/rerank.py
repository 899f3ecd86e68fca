"""Cross-encoder re-ranking of a first-stage run (the paper's "Ours+CE").

score: re-rank the top --depth hits of one query shard (--shard of --num-shards)
merge: put the shard runs back together, checked against the first-stage run
"""

import argparse
import logging
import os
import time

# Jobs never contact the hub: the cross-encoder is a local (prefetched) folder.
os.environ["HF_HUB_OFFLINE"] = "1"

from contriever_repro.cli import add_attention_args, apply_attention, run_main, set_threads  # noqa: E402
from contriever_repro.errors import InputError  # noqa: E402
from contriever_repro.io import read_table, table_rows, write_table  # noqa: E402
from contriever_repro.models.spec import DEVICES, DTYPES, choose_device  # noqa: E402
from contriever_repro.retrieval import rerank as rr  # noqa: E402

log = logging.getLogger("contriever_repro.rerank")


def score(args) -> None:
    import torch

    # Before anything else: a GPU job that sees no GPU fails now, not at its time limit.
    device = choose_device(args.device, args.gpus, torch.cuda.is_available(), what="re-rank")
    set_threads(args.threads)
    apply_attention(args)
    run = read_table(args.run, "run")
    mine = rr.query_shard(run["query_id"].unique(), args.shard, args.num_shards)
    run = run[run["query_id"].isin(mine)]
    queries = read_table(args.queries, "queries")
    queries = queries[queries["query_id"].isin(mine)]
    # The passages the shard's hits point at, and its query ids (a small corpus checks
    # whether a short query lost its own id as an identical hit); nothing else.
    corpus = rr.read_corpus_docs(args.corpus, set(run["doc_id"]) | set(mine))
    ce = rr.load_cross_encoder(args.cross_encoder, args.label_index, args.dtype, device)
    start = time.perf_counter()
    out = rr.rerank_run(
        run,
        queries,
        corpus,
        ce,
        depth=args.depth,
        batch_size=args.batch_size,
        max_length=args.max_length,
        corpus_size=table_rows(args.corpus),
    )
    seconds = time.perf_counter() - start
    pairs = int(run.groupby("query_id").size().clip(upper=args.depth).sum())
    log.info(
        "shard %d/%d: %d queries, %d pairs in %.1f s (%.1f pairs/s, %s, %s)",
        args.shard,
        args.num_shards,
        len(mine),
        pairs,
        seconds,
        pairs / max(seconds, 1e-9),
        device,
        args.dtype,
    )
    write_outputs(out, args)
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)


def merge(args) -> None:
    first = read_table(args.first_stage, "run")
    out = rr.merge_runs(args.run_shards, query_ids=first["query_id"].unique())
    log.info("merged %d shard runs: %d queries, %d hits", len(args.run_shards),
             out["query_id"].nunique(), len(out))  # fmt: skip
    write_outputs(out, args)


def write_outputs(run, args) -> None:
    from contriever_repro.retrieval.search import write_trec

    write_table(run, args.out, "run")
    if args.trec:
        write_trec(run, args.trec, args.tag)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="re-rank one query shard")
    s.add_argument("--run", required=True, help="first-stage run parquet")
    s.add_argument("--queries", required=True, help="queries parquet")
    s.add_argument("--corpus", required=True, help="corpus parquet")
    s.add_argument("--cross-encoder", required=True, help="local model folder")
    s.add_argument("--label-index", type=int, default=None, help="for heads with >1 output")
    s.add_argument("--depth", type=int, default=rr.DEFAULT_DEPTH)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--num-shards", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=rr.DEFAULT_BATCH_SIZE)
    s.add_argument("--max-length", type=int, default=rr.DEFAULT_MAX_LENGTH)
    s.add_argument("--dtype", choices=DTYPES, default="fp32")
    s.add_argument("--device", choices=DEVICES, default="auto", help="config `device`")
    s.add_argument("--gpus", type=int, default=0, help="GPUs the job was given")
    s.add_argument("--threads", type=int, default=None)
    add_attention_args(s)
    m = sub.add_parser("merge", help="merge shard runs")
    m.add_argument("--run-shards", nargs="+", required=True, help="shard run parquets")
    m.add_argument("--first-stage", required=True, help="the run that was re-ranked")
    for p in (s, m):
        p.add_argument("--out", required=True, help="run parquet to write")
        p.add_argument("--trec", default=None, help="TREC run file to write as well")
        p.add_argument("--tag", default="rerank", help="run name in the TREC file")
    args = ap.parse_args()
    if args.command == "score":
        if args.depth < 1:
            raise InputError(f"--depth must be positive, got {args.depth}")
        score(args)
    else:
        merge(args)


if __name__ == "__main__":
    run_main(main)
