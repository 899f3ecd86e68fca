"""Split a one-document-per-line corpus into N line-aligned pieces (rule split_corpus),
so that tokenisation runs as N cluster jobs and every training rank gets whole files."""

import argparse

from contriever_repro.cli import run_main
from contriever_repro.data.corpora import split_text_file


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--input", required=True)
    ap.add_argument("--pieces", type=int, required=True)
    ap.add_argument("--out", required=True, help="folder of <stem>.NNN<suffix> pieces")
    args = ap.parse_args()
    split_text_file(args.input, args.pieces, args.out)


if __name__ == "__main__":
    run_main(main)
