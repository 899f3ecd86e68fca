"""Recall@k of an approximate run against the exact run of the same queries (JSON)."""

import argparse
import json

from contriever_repro.cli import run_main
from contriever_repro.errors import InputError
from contriever_repro.io import read_table, write_text
from contriever_repro.retrieval.index import recall_against_exact


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--approx", required=True, help="run parquet of the approximate index")
    ap.add_argument("--exact", required=True, help="run parquet of exact search")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--out", required=True, help="JSON to write")
    args = ap.parse_args()
    if args.k <= 0:
        raise InputError(f"--k must be positive, got {args.k}")
    approx = read_table(args.approx, "run")
    exact = read_table(args.exact, "run")
    if exact.empty:
        raise InputError("the exact run has no hits", args.exact)
    recall = recall_against_exact(approx, exact, args.k)
    exact_q, approx_q = set(exact["query_id"]), set(approx["query_id"])
    summary = {
        "k": args.k,
        "recall": recall,
        "recall_loss": 1.0 - recall,
        "queries": len(exact_q),
        "queries_missing_in_approx": len(exact_q - approx_q),
        "queries_only_in_approx": len(approx_q - exact_q),
        "exact_hits_at_k": int((exact["rank"] <= args.k).sum()),
        "approx_hits_at_k": int((approx["rank"] <= args.k).sum()),
    }
    write_text(json.dumps(summary, indent=2) + "\n", args.out)


if __name__ == "__main__":
    run_main(main)
