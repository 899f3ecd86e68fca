"""Data-set level metrics: a single unit as is, sub-forums (CQADupStack) averaged."""

import argparse

import pandas as pd

from contriever_repro.cli import run_main
from contriever_repro.evaluation.metrics import mean_over_subsets
from contriever_repro.io import read_table, write_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--units", nargs="+", required=True, help="per-unit metric tables")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    frames = [read_table(p) for p in args.units]
    if len(frames) == 1:
        table = frames[0].assign(dataset=args.dataset)
    else:
        mean = mean_over_subsets([f[["metric", "value"]] for f in frames])
        first = frames[0]
        shared = {
            c: first[c].iloc[0]
            for c in ("model", "split", "config_hash", "code_version")
            if c in first.columns
        }
        n_queries = pd.concat(frames).groupby("metric")["n_queries"].sum()
        table = mean.assign(
            dataset=args.dataset,
            unit=f"mean of {len(frames)} units",
            n_queries=mean["metric"].map(n_queries).astype("int64"),
            run=";".join(f["run"].iloc[0] for f in frames),
            **shared,
        )
    write_table(table, args.out)


if __name__ == "__main__":
    run_main(main)
