"""Draw one paper figure (PNG) from metric files and quoted paper numbers (rule figure)."""

import argparse
import json

from contriever_repro.cli import run_main
from contriever_repro.reporting import figures, tables


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--spec", required=True, help="config.figures entry as JSON")
    ap.add_argument("--paper", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--metrics", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    ap.add_argument("--csv", default=None, help="optional: also write the plotted numbers")
    args = ap.parse_args()

    spec = json.loads(args.spec)
    paper = tables.load_paper_results(args.paper)
    metrics = tables.read_metrics(args.metrics)
    if figures.figure_kind(args.name, spec) == "queue_sweep":
        figures.queue_sweep_figure(
            metrics, spec, args.out, out_csv=args.csv, label=args.label, name=args.name
        )
    else:
        figures.figure1(
            metrics,
            spec,
            args.out,
            paper=paper,
            label=args.label,
            name=args.name,
            out_csv=args.csv,
        )


if __name__ == "__main__":
    run_main(main)
