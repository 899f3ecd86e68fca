"""Validate a BEIR-format folder and convert one split to parquet (rule convert_beir)."""

import argparse
import logging

from contriever_repro.cli import run_main
from contriever_repro.data.beir import convert_beir_folder

log = logging.getLogger("convert")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--qrels", required=True)
    ap.add_argument("--lenient", action="store_true", help="drop qrels naming unknown ids")
    args = ap.parse_args()
    counts = convert_beir_folder(
        args.folder, args.split, args.corpus, args.queries, args.qrels, strict=not args.lenient
    )
    log.info("converted %s [%s]: %s", args.folder, args.split, counts)


if __name__ == "__main__":
    run_main(main)
