"""Tokenise one corpus piece into a memory-mapped token shard (rule tokenize_piece)."""

import argparse

from contriever_repro.cli import run_main
from contriever_repro.training.loop import load_tokenizer
from contriever_repro.training.shards import tokenize_text_file


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--text", required=True, help="one document per line, UTF-8")
    ap.add_argument("--tokenizer", required=True, help="HF folder or hub id")
    ap.add_argument("--out-prefix", required=True)
    ap.add_argument("--normalize", action="store_true", help="the authors' text normaliser")
    args = ap.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    tokenize_text_file(args.text, tokenizer, args.out_prefix, normalize=args.normalize)


if __name__ == "__main__":
    run_main(main)
