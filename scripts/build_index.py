"""Build an approximate FAISS index over corpus embedding shards (retrieval/index.py)."""

import argparse
import logging
from pathlib import Path

from contriever_repro.cli import run_main, set_threads
from contriever_repro.errors import InputError
from contriever_repro.models.spec import DEVICES, choose_device
from contriever_repro.retrieval.embeddings import load_embeddings
from contriever_repro.retrieval.index import (
    build_index,
    default_settings,
    make_index,
    parse_search_params,
    save_index,
    set_search_params,
)
from contriever_repro.retrieval.search import check_same_model, faiss_gpu_available

log = logging.getLogger("build_index")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shard", action="append", required=True, help="corpus shard prefix")
    ap.add_argument(
        "--factory",
        default="auto",
        help="faiss.index_factory string, or auto: the default scaled to the corpus "
        "(index.default_settings; IVF16384,PQ384x4fs for 21M 768-d passages)",
    )
    ap.add_argument("--train-size", type=int, default=1_000_000, help="training sample size")
    ap.add_argument("--seed", type=int, default=0, help="seed of the training sample")
    ap.add_argument(
        "--search-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="search parameter stored as the index's default (e.g. nprobe=64); "
        "with --factory auto, the default's are used unless given",
    )
    ap.add_argument("--out-prefix", required=True, help="writes PREFIX.faiss/.ids.parquet/.json")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=DEVICES, default="auto", help="config `device`")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the job was given")
    args = ap.parse_args()
    device = choose_device(args.device, args.gpus, faiss_gpu_available(), what="build an index")
    set_threads(args.threads)
    if args.train_size <= 0:
        raise InputError(f"--train-size must be positive, got {args.train_size}")

    shards, names, first_meta = [], [], None
    for prefix in args.shard:
        ids, emb, meta = load_embeddings(prefix)
        if first_meta is None:
            first_meta = meta
        check_same_model(
            meta, first_meta, "shard has", f"{args.shard[0]} has", prefix,
            "one index holds one model's embeddings",
        )  # fmt: skip
        shards.append((ids, emb))
        names.append(prefix)
    total = sum(len(ids) for ids, _emb in shards)
    dim = int(shards[0][1].shape[1])
    params = parse_search_params(args.search_param)
    factory = args.factory
    if factory == "auto":
        factory, auto_params = default_settings(total, dim)
        params = {**auto_params, **params}
    # A bad factory string or parameter fails now, not after hours of training.
    set_search_params(make_index(dim, factory), params)
    log.info("building %s over %d vectors of %d-d from %d shard(s)", factory, total, dim,
             len(shards))  # fmt: skip

    index, ids = build_index(
        shards,
        factory,
        train_size=args.train_size,
        seed=args.seed,
        use_gpu=device == "cuda",
        names=names,
    )
    save_index(
        index,
        ids,
        args.out_prefix,
        factory=factory,
        train_size=args.train_size,
        seed=args.seed,
        embedding_meta=first_meta,
        search_params=params,
        shards=[
            {"name": Path(p).name, "count": len(i)}
            for p, (i, _e) in zip(names, shards, strict=True)
        ],
    )


if __name__ == "__main__":
    run_main(main)
