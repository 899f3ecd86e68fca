"""Generate the demo world: BEIR-format data sets and pre-training text (rule demo_world)."""

import argparse
import json
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.data.demo_world import (
    generate_demo_datasets,
    generate_pretraining_corpus,
    make_world,
)
from contriever_repro.io import atomic_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="config.demo_world as JSON")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    spec = json.loads(args.spec)
    seed, world = int(spec.get("seed", 0)), spec.get("world")
    with atomic_dir(args.out) as tmp:
        generate_demo_datasets(tmp, spec["datasets"], seed, world)
        lines = int(spec.get("pretraining_lines", 5000))
        generate_pretraining_corpus(Path(tmp) / "pretraining" / "text.txt", lines, seed, world)
        # Named unlabelled streams (e.g. a Wikipedia-like and a web-like one) for the
        # pre-training data ablation; each is its own document stream of the same world.
        for name, stream in spec.get("pretraining_streams", {}).items():
            make_world(seed, world).write_pretraining_text(
                Path(tmp) / "pretraining" / f"{name}.txt",
                int(stream["lines"]),
                doc_words=tuple(stream.get("doc_words", (40, 150))),
                stream=f"pretraining-{name}",
            )


if __name__ == "__main__":
    run_main(main)
