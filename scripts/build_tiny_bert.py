"""Build a tiny BERT from the demo world: WordPiece vocabulary, random init.

The vocabulary is learnt from the demo world's pre-training stream named by the spec's
`vocab_text` (default "text": pretraining/text.txt; "multilingual" for a multilingual
model, whose vocabulary must cover every language and script).
"""

import argparse
import json
import re
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.errors import InputError
from contriever_repro.models.tiny_bert import build_tiny_bert


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="config.tiny_berts entry as JSON")
    ap.add_argument("--demo-root", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    spec = json.loads(args.spec)
    stream = spec.pop("vocab_text", "text")
    if not isinstance(stream, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", stream):
        raise InputError(f"tiny_berts: vocab_text must be a stream name, got {stream!r}")
    text_file = Path(args.demo_root) / "pretraining" / f"{stream}.txt"
    if not text_file.is_file():
        raise InputError(
            f"tiny_berts: vocab_text {stream!r}: the demo world wrote no such stream", text_file
        )
    with open(text_file, encoding="utf-8") as fh:
        texts = [line.rstrip("\n") for line in fh]
    build_tiny_bert(texts, args.out, **spec)


if __name__ == "__main__":
    run_main(main)
