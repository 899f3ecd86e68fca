"""Exact inner-product search of query embeddings over corpus shards (rule search)."""

import argparse

from contriever_repro.cli import run_main, set_threads
from contriever_repro.models.spec import DEVICES, choose_device
from contriever_repro.retrieval.embeddings import load_embeddings
from contriever_repro.retrieval.search import (
    add_run_args,
    exact_search,
    faiss_gpu_available,
    load_shards,
    write_run,
)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", required=True, help="query embedding prefix")
    ap.add_argument("--shard", action="append", required=True, help="corpus shard prefix")
    add_run_args(ap)
    ap.add_argument("--device", choices=DEVICES, default="auto", help="config `device`")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the job was given")
    args = ap.parse_args()
    # A GPU job whose FAISS cannot use a GPU (faiss-cpu installed, CUDA not visible)
    # fails now instead of searching on CPU for hours.
    device = choose_device(args.device, args.gpus, faiss_gpu_available(), what="search")
    set_threads(args.threads)

    qids, qemb, qmeta = load_embeddings(args.queries, mmap=False)

    run = exact_search(
        qids,
        qemb,
        load_shards(args.shard, qmeta),
        top_k=args.top_k,
        drop_identical_ids=args.drop,
        use_gpu=device == "cuda",
    )
    write_run(run, args.run, args.trec, args.tag)


if __name__ == "__main__":
    run_main(main)
