"""Mine hard negatives for the training queries with the phase-1 model (rule mine_negatives).

Encodes the training queries with the model, searches them exactly against the corpus
embedding shards (encoded by the same model), drops each query's judged positives and
samples the negatives; writes the mined table (with its provenance), a markdown report
and a figure.
"""

import argparse
import json
import logging
import os

# Mining jobs read a local model folder and never contact the hub (see encode.py).
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

from contriever_repro.cli import add_attention_args, apply_attention, run_main, set_threads  # noqa: E402
from contriever_repro.errors import InputError  # noqa: E402
from contriever_repro.io import read_table  # noqa: E402
from contriever_repro.models.fingerprint import file_fingerprint, model_fingerprint  # noqa: E402
from contriever_repro.models.spec import DEVICES, ModelSpec, choose_device, load_encoder  # noqa: E402
from contriever_repro.reporting.mining_report import mining_report  # noqa: E402
from contriever_repro.retrieval import encode as enc  # noqa: E402
from contriever_repro.retrieval.mining import (  # noqa: E402
    check_mining_args,
    mine_negatives,
    mining_metadata,
    positives_by_query,
    write_mined,
)
from contriever_repro.retrieval.search import (  # noqa: E402
    BACKENDS,
    exact_search,
    gpu_visible,
    load_shards,
)

log = logging.getLogger("mine_negatives")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="model spec as JSON (config.models entry)")
    ap.add_argument("--source", default="", help="the phase-1 model folder (overrides spec)")
    ap.add_argument("--queries", required=True, help="training queries parquet (query_id, text)")
    ap.add_argument("--records", required=True, help="training records (query_id, positive_ids)")
    ap.add_argument("--shard", action="append", required=True, help="corpus embedding prefix")
    ap.add_argument("--corpus", required=True, help="corpus parquet (size, report texts)")
    ap.add_argument("--depth", type=int, required=True, help="config mining_depth")
    ap.add_argument("--rank-min", type=int, default=1)
    ap.add_argument("--rank-max", type=int, default=None, help="default: the depth")
    ap.add_argument("--per-query", type=int, default=None, help="default: all in the range")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=DEVICES, default="auto", help="config `device`")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the job was given")
    ap.add_argument("--threads", type=int, default=None)
    add_attention_args(ap)
    ap.add_argument("--search-backend", choices=BACKENDS, default="faiss")
    ap.add_argument("--out", required=True, help="mined negatives parquet")
    ap.add_argument("--report", required=True, help="markdown report")
    ap.add_argument("--plot", required=True, help="png figure")
    args = ap.parse_args()
    rank_max = args.depth if args.rank_max is None else args.rank_max
    device = choose_device(args.device, args.gpus, torch.cuda.is_available(), what="mine")
    # A GPU job whose FAISS cannot use a GPU fails now, as rule search does, instead of
    # searching hundreds of thousands of queries on CPU for hours.
    visible = gpu_visible(args.search_backend)
    search_device = choose_device(args.device, args.gpus, visible, what="search")
    set_threads(args.threads)
    apply_attention(args)

    corpus = read_table(args.corpus, "corpus")
    n_docs = len(corpus)
    settings = dict(depth=args.depth, rank_min=args.rank_min, rank_max=rank_max)
    check_mining_args(**settings, per_query=args.per_query, n_docs=n_docs)
    in_shards = sum(len(enc.load_embeddings(p)[0]) for p in args.shard)
    if in_shards != n_docs:
        raise InputError(
            f"the corpus embedding shards hold {in_shards} documents but the corpus has "
            f"{n_docs}: shards of another corpus or missing shards",
            args.corpus,
        )

    records = read_table(args.records)
    missing = [c for c in ("query_id", "positive_ids") if c not in records.columns]
    if missing:
        raise InputError(f"not a training records table: missing columns {missing}", args.records)
    positives = positives_by_query(records)
    queries = read_table(args.queries, "queries")
    queries = queries.assign(query_id=queries["query_id"].astype(str))
    absent = sorted(set(positives) - set(queries["query_id"]))
    if absent:
        raise InputError(
            f"{len(absent)} query id(s) of the training records are not in the queries "
            f"(first: {absent[:5]})",
            args.queries,
        )
    queries = queries[queries["query_id"].isin(positives)].reset_index(drop=True)
    log.info("mining for %d training queries over %d documents", len(queries), n_docs)

    cfg = json.loads(args.spec)
    spec = ModelSpec.from_config(cfg.pop("name"), cfg, source=args.source or None)
    fingerprint = model_fingerprint(spec.source)
    tokenizer, model = load_encoder(spec, device, offline=True)
    qids, qemb = enc.encode_table(queries, spec, tokenizer, model, "query", what="encode queries")
    del model
    # Query and document ids may share a namespace by accident (MS MARCO's are both
    # integers), so no hit is dropped for having the query's id.
    run = exact_search(
        qids,
        qemb,
        load_shards(args.shard, enc.embedding_meta(spec, "query")),
        top_k=args.depth,
        drop_identical_ids=False,
        backend=args.search_backend,
        device=search_device,
    )
    mined = mine_negatives(
        run, positives, **settings, per_query=args.per_query, seed=args.seed, n_docs=n_docs
    )
    meta = mining_metadata(
        model_fingerprint=fingerprint,
        model=spec.name,
        source=str(spec.source),
        **settings,
        per_query=args.per_query,
        seed=args.seed,
        training_set=str(args.records),
        training_set_fingerprint=file_fingerprint(args.records),
        queries=str(args.queries),
        n_docs=n_docs,
    )
    write_mined(mined, args.out, meta)
    numbers = mining_report(
        mined, queries, corpus, records, args.report, args.plot, seed=args.seed, metadata=meta
    )
    log.info("report: %s", numbers)


if __name__ == "__main__":
    run_main(main)
