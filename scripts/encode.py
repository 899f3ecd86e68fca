"""Encode one corpus shard or a query set with a dense model (rule encode_corpus/queries)."""

import argparse
import json
import os

# Encoding jobs never contact the hub: they read a local folder (a prefetched hub
# snapshot, a model built by the workflow, or the user's). Set before transformers loads.
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

from contriever_repro.cli import add_attention_args, apply_attention, run_main, set_threads  # noqa: E402
from contriever_repro.io import read_table, read_table_rows, table_rows  # noqa: E402
from contriever_repro.models.spec import DEVICES, ModelSpec, choose_device, load_encoder  # noqa: E402
from contriever_repro.retrieval import encode as enc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("side", choices=["corpus", "queries"])
    ap.add_argument("--spec", required=True, help="model spec as JSON (config.models entry)")
    ap.add_argument("--source", default="", help="override the spec's source (built model)")
    ap.add_argument("--input", required=True, help="corpus or queries parquet")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--out-prefix", required=True)
    ap.add_argument("--resume-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=DEVICES, default="auto", help="config `device`")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the job was given")
    add_attention_args(ap)
    args = ap.parse_args()
    # Before anything else: a GPU job that sees no GPU fails now, not at its time limit.
    device = choose_device(args.device, args.gpus, torch.cuda.is_available())
    set_threads(args.threads)
    apply_attention(args)

    cfg = json.loads(args.spec)
    spec = ModelSpec.from_config(cfg.pop("name"), cfg, source=args.source or None)
    side = "passage" if args.side == "corpus" else "query"
    # One side in one precision per job: on a GPU the weights themselves are cast.
    weights_dtype = spec.dtype_for(side)
    tokenizer, model = load_encoder(spec, device, offline=True, weights_dtype=weights_dtype)

    if args.side == "corpus":
        # Only this shard's rows are read (DPR's 21M passages are 13 GB of text).
        start, end = enc.shard_bounds(table_rows(args.input), args.num_shards, args.shard)
        table = read_table_rows(args.input, "corpus", start, end)
    else:
        table = read_table(args.input, "queries")

    ids, emb = enc.encode_table(
        table,
        spec,
        tokenizer,
        model,
        side,
        what=f"encode {args.side} {args.shard}/{args.num_shards}",
        resume_dir=args.resume_dir,
        resume_key=json.dumps(
            [spec.to_dict(), str(args.input), args.shard, args.num_shards], sort_keys=True
        ),
    )
    meta = enc.embedding_meta(spec, side)
    weights = str(next(model.parameters()).dtype).removeprefix("torch.")
    meta.update(shard=args.shard, num_shards=args.num_shards, device=device, weights=weights)
    enc.save_embeddings(args.out_prefix, ids, emb, meta)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory {peak:.2f} GiB", flush=True)
    if args.resume_dir:
        import shutil

        shutil.rmtree(args.resume_dir, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
