"""Fetch a hub model at its pinned revision into a local folder (rule prefetch_model).

Runs on the submit host (a localrule): compute nodes may have no internet, so cluster
jobs (encoding, tokenisation, pre-training) load only this folder, offline.
"""

import argparse

from contriever_repro.cli import run_main
from contriever_repro.models.hub import HubSource, prefetch_model


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repo-id", required=True, help="Hugging Face hub id")
    ap.add_argument("--revision", default="", help="commit hash (empty: not pinned)")
    ap.add_argument("--users", nargs="*", default=[], help="config keys using it (messages)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    source = HubSource(args.repo_id, args.revision or None, tuple(args.users))
    prefetch_model(source, args.out)


if __name__ == "__main__":
    run_main(main)
