"""Model card (README.md) of a pre-trained model, with the evaluation numbers measured."""

import argparse

from contriever_repro.cli import run_main
from contriever_repro.models.export import write_model_card


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", required=True, help="folder exported by pretrain")
    ap.add_argument("--metrics", nargs="*", default=[], help="data-set metric tables")
    ap.add_argument("--out", required=True, help="model card to write")
    args = ap.parse_args()
    write_model_card(args.model_dir, args.metrics, out=args.out)


if __name__ == "__main__":
    run_main(main)
