"""A data set's training or dev split as fine-tuning records (rule training_set)."""

import argparse
import logging

from contriever_repro.cli import run_main
from contriever_repro.data.training_sets import convert_training_split

log = logging.getLogger("training_set")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", required=True, help="BEIR-format folder")
    ap.add_argument("--split", required=True, help="qrels/<split>.tsv to convert")
    ap.add_argument("--corpus", required=True, help="the collection's corpus.parquet")
    ap.add_argument("--out-queries", required=True)
    ap.add_argument("--out-records", required=True)
    args = ap.parse_args()
    counts = convert_training_split(
        args.folder, args.split, args.corpus, args.out_queries, args.out_records
    )
    log.info("training records of %s [%s]: %s", args.folder, args.split, counts)


if __name__ == "__main__":
    run_main(main)
