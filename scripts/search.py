"""Inner-product search of query embeddings over a corpus (rule search): exact over
embedding shards (--shard), or through an approximate index (--index, see
scripts/build_index.py), optionally re-scored exactly from its shards (--rerank-shard)."""

import argparse

from contriever_repro.cli import run_main, set_threads
from contriever_repro.errors import InputError
from contriever_repro.models.spec import DEVICES, choose_device
from contriever_repro.retrieval.embeddings import load_embeddings
from contriever_repro.retrieval.search import (
    BACKENDS,
    add_run_args,
    exact_search,
    gpu_visible,
    load_shards,
    write_run,
)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", required=True, help="query embedding prefix")
    corpus = ap.add_mutually_exclusive_group(required=True)
    corpus.add_argument("--shard", action="append", help="corpus shard prefix (exact search)")
    corpus.add_argument("--index", help="approximate index prefix (scripts/build_index.py)")
    ap.add_argument(
        "--search-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --index: FAISS search parameter (e.g. nprobe=64, efSearch=128); "
        "overrides the one stored with the index",
    )
    ap.add_argument(
        "--rerank-shard",
        action="append",
        default=[],
        help="with --index: the shards it was built from, in order; the best "
        "--rerank-depth candidates are re-scored exactly from them",
    )
    ap.add_argument("--rerank-depth", type=int, default=None, help="default: 1000")
    ap.add_argument(
        "--backend",
        choices=BACKENDS,
        default="faiss",
        help="exact search (--shard) by FAISS, or by plain PyTorch (a GPU without a "
        "faiss-gpu build for its CUDA; FAISS need not be installed)",
    )
    add_run_args(ap)
    ap.add_argument("--device", choices=DEVICES, default="auto", help="config `device`")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the job was given")
    args = ap.parse_args()
    if args.shard and (args.search_param or args.rerank_shard or args.rerank_depth):
        ap.error("--search-param, --rerank-shard and --rerank-depth go with --index")
    if args.index and args.backend != "faiss":
        ap.error("--backend torch goes with --shard (an approximate index is FAISS's)")
    # A GPU job whose backend cannot use a GPU (faiss-cpu installed, CUDA not visible)
    # fails now instead of searching on CPU for hours.
    device = choose_device(args.device, args.gpus, gpu_visible(args.backend), what="search")
    set_threads(args.threads)

    qids, qemb, qmeta = load_embeddings(args.queries, mmap=False)
    if args.shard:
        run = exact_search(
            qids,
            qemb,
            load_shards(args.shard, qmeta),
            top_k=args.top_k,
            drop_identical_ids=args.drop,
            backend=args.backend,
            device=device,
        )
    else:
        run = search_index(args, qids, qemb, qmeta, device)
    write_run(run, args.run, args.trec, args.tag)


def search_index(args, qids, qemb, qmeta, device):
    from contriever_repro.retrieval.index import (
        DEFAULT_RERANK_DEPTH,
        check_query_meta,
        check_rerank_shards,
        index_search,
        load_index,
        parse_search_params,
    )

    index, ids, meta = load_index(args.index)
    check_query_meta(meta, qmeta, args.index + ".json")
    params = {**meta.get("search_params", {}), **parse_search_params(args.search_param)}
    rerank = None
    if args.rerank_shard:
        rerank = list(load_shards(args.rerank_shard, qmeta))
        check_rerank_shards(rerank, ids, args.index)
    depth = DEFAULT_RERANK_DEPTH if args.rerank_depth is None else args.rerank_depth
    if depth <= 0:
        raise InputError(f"--rerank-depth must be positive, got {depth}")
    return index_search(
        index,
        ids,
        qids,
        qemb,
        top_k=args.top_k,
        search_params=params,
        use_gpu=device == "cuda",
        drop_identical_ids=args.drop,
        rerank_shards=rerank,
        rerank_depth=depth,
    )


if __name__ == "__main__":
    run_main(main)
