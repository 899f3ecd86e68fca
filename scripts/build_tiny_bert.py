"""Build a tiny BERT from the demo world: WordPiece vocabulary, random init."""

import argparse
import json
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.models.tiny_bert import build_tiny_bert


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="config.tiny_berts entry as JSON")
    ap.add_argument("--demo-root", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    spec = json.loads(args.spec)
    text_file = Path(args.demo_root) / "pretraining" / "text.txt"
    with open(text_file, encoding="utf-8") as fh:
        texts = [line.rstrip("\n") for line in fh]
    build_tiny_bert(texts, args.out, **spec)


if __name__ == "__main__":
    run_main(main)
