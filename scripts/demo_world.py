"""Generate the demo world: BEIR-format data sets, open-domain QA (DPR passages, FiD
questions, MKQA), Mr. TyDi-like archives and pre-training text, monolingual and
multilingual (rule demo_world)."""

import argparse
import json
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.data.demo_world import (
    generate_demo_datasets,
    generate_mrtydi,
    generate_multilingual_pretraining,
    generate_openqa,
    generate_pretraining_corpus,
    make_world,
)
from contriever_repro.errors import InputError
from contriever_repro.io import atomic_dir

_FOLDERS = ("pretraining", "openqa", "mrtydi")  # beside the data sets' folders


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="config.demo_world as JSON")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    spec = json.loads(args.spec)
    seed, world = int(spec.get("seed", 0)), spec.get("world")
    languages = spec.get("languages")
    clash = sorted(set(spec["datasets"]) & set(_FOLDERS))
    if clash:
        raise InputError(f"demo_world.datasets: names {clash} are taken by the world's folders")
    with atomic_dir(args.out) as tmp:
        generate_demo_datasets(tmp, spec["datasets"], seed, world, languages)
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
        # Open-domain QA in English (NQ/TriviaQA-like) and MKQA-like questions in every
        # language, over one DPR-style passage collection.
        if spec.get("openqa") is not None:
            generate_openqa(Path(tmp) / "openqa", spec["openqa"], seed, world, languages)
        # Mr. TyDi-like release archives, one per language (mrtydi-v1.1-<name>.tar.gz):
        # passages and questions in the same language.
        if spec.get("mrtydi") is not None:
            generate_mrtydi(Path(tmp) / "mrtydi", spec["mrtydi"], seed, world, languages)
        # Streams mling-<code> (code-switched text per language) and multilingual (all
        # of them interleaved: a multilingual tiny BERT's vocabulary text).
        if spec.get("multilingual_pretraining") is not None:
            generate_multilingual_pretraining(
                Path(tmp) / "pretraining", spec["multilingual_pretraining"], seed, world, languages
            )


if __name__ == "__main__":
    run_main(main)
