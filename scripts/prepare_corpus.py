"""Turn a raw pre-training corpus into one document per line (Wikipedia dump, CC-100, text)."""

import argparse
import json
import logging

from contriever_repro.cli import run_main
from contriever_repro.data.corpora import cc100_to_lines, text_to_lines, wikipedia_to_lines
from contriever_repro.io import write_text

log = logging.getLogger("prepare_corpus")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kind", required=True, choices=["wikipedia", "cc100", "text"])
    ap.add_argument("--input", required=True, help="dump / .txt.xz / text file")
    ap.add_argument("--index", default=None, help="Wikipedia multistream index (parallel read)")
    ap.add_argument("--out", required=True, help="text file to write, one document per line")
    ap.add_argument("--processes", type=int, default=1, help="Wikipedia worker processes")
    ap.add_argument(
        "--min-chars", type=int, default=None, help="drop shorter units (Wikipedia 200, else 0)"
    )
    ap.add_argument("--unit", default="document", choices=["document", "paragraph"])
    ap.add_argument("--stats", default=None, help="JSON file for the counts")
    args = ap.parse_args()

    if args.kind == "wikipedia":
        stats = wikipedia_to_lines(
            args.input,
            args.out,
            index=args.index or None,
            processes=args.processes,
            min_chars=200 if args.min_chars is None else args.min_chars,
            log=log.info,
        )
    elif args.kind == "cc100":
        stats = cc100_to_lines(
            args.input, args.out, unit=args.unit, min_chars=args.min_chars or 0, log=log.info
        )
    else:
        stats = text_to_lines(args.input, args.out, min_chars=args.min_chars or 0, log=log.info)
    if args.stats:
        record = {"kind": args.kind, "input": args.input, "out": args.out, **stats}
        write_text(json.dumps(record, indent=2) + "\n", args.stats)


if __name__ == "__main__":
    run_main(main)
