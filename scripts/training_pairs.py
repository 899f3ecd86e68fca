"""Bring your own training set, or take one out (no rule: run it by hand).

import: BGE lines {"query", "pos": [...], "neg": [...]} or DPR json/jsonl
        -> a BEIR folder; declare it as a data set and fine-tune on it:
        datasets: {mine: {source: local, path: FOLDER, split: train}}
        finetuning: {my-run: {data: mine, init: ...}}
export: a workflow training set (queries + records parquet, the collection's
        corpus parquet, optionally the mined negatives of a phase-2 run) -> jsonl
"""

import argparse
import logging

from contriever_repro.cli import run_main
from contriever_repro.data.mined import read_mined
from contriever_repro.data.training_sets import (
    PAIR_STYLES,
    read_pairs_jsonl,
    write_beir_folder,
    write_pairs_jsonl,
)
from contriever_repro.io import read_table

log = logging.getLogger("training_pairs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="jsonl -> BEIR folder")
    imp.add_argument("--jsonl", required=True)
    imp.add_argument("--out", required=True, help="BEIR folder to write")
    imp.add_argument("--split", default="train")
    exp = sub.add_parser("export", help="workflow training set -> jsonl")
    exp.add_argument("--queries", required=True, help="finetune/data/<set>/<split>/queries.parquet")
    exp.add_argument("--records", required=True, help="finetune/data/<set>/<split>/records.parquet")
    exp.add_argument("--corpus", required=True, help="data/<set>/corpus.parquet")
    exp.add_argument("--mined", default=None, help="finetune/mined/<run>.parquet (negatives)")
    exp.add_argument("--style", choices=PAIR_STYLES, default="bge")
    exp.add_argument("--out", required=True, help="jsonl to write")
    args = ap.parse_args()

    if args.command == "import":
        queries, corpus, records = read_pairs_jsonl(args.jsonl)
        counts = write_beir_folder(queries, corpus, records, args.out, args.split)
        if counts["negatives_not_written"]:
            log.warning(
                "%d negatives of %s are not part of a BEIR folder: phase 2 mines its own",
                counts["negatives_not_written"],
                args.jsonl,
            )
        log.info("wrote %s: %s", args.out, counts)
        return
    records = read_table(args.records)
    if args.mined:
        mined, _ = read_mined(args.mined)
        by_query = mined.groupby("query_id")["doc_id"].agg(list)
        records = records.assign(
            negative_ids=records["query_id"]
            .map(by_query)
            .map(lambda v: v if isinstance(v, list) else [])
        )
    n = write_pairs_jsonl(
        read_table(args.queries), read_table(args.corpus), records, args.out, args.style
    )
    log.info("wrote %d training examples to %s", n, args.out)


if __name__ == "__main__":
    run_main(main)
