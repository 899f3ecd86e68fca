"""Build one paper-shaped table (CSV, parquet, Markdown) from metric files (rule table)."""

import argparse
import json

from contriever_repro.cli import run_main
from contriever_repro.reporting import languages, tables


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--spec", required=True, help="config.tables entry as JSON")
    ap.add_argument("--paper", required=True, help="paper_results.yaml")
    ap.add_argument("--label", default="")
    ap.add_argument("--metrics", nargs="*", default=[])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()

    paper = tables.load_paper_results(args.paper)
    spec = json.loads(args.spec)
    if languages.is_languages_spec(spec):  # Table 12: rows from the config (plan.report_spec)
        rows = dict(spec.pop("row_languages"))  # [[row, codes], ...] in the spec's order
        built = languages.build_languages_table(args.name, spec, rows, paper, args.label)
    else:
        metrics = tables.read_metrics(args.metrics)
        built = tables.build_table(args.name, spec, metrics, paper, args.label)
    tables.write_table_outputs(built, args.csv, args.parquet, args.md)


if __name__ == "__main__":
    run_main(main)
