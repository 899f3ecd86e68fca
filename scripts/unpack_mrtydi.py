"""Turn a Mr. TyDi v1.1 language archive into a BEIR folder, as the authors' converter
does (corpus titles set to "", the topics of all splits, qrels per split)."""

import argparse

from contriever_repro.cli import run_main
from contriever_repro.data.mrtydi import SPLITS, archive_root, unpack_archive


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archive", required=True, help="mrtydi-v1.1-<name>.tar.gz")
    ap.add_argument("--language", required=True, help="Mr. TyDi code: ar, bn, en, ... th")
    ap.add_argument("--out", required=True, help="the BEIR folder to write")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), help="qrels to write when present")
    ap.add_argument("--require", nargs="*", default=["test"], help="splits that must be present")
    args = ap.parse_args()
    # The top folder names the language: a swapped archive fails at its first member.
    unpack_archive(
        args.archive, args.out, args.splits, args.require, root=archive_root(args.language)
    )


if __name__ == "__main__":
    run_main(main)
