"""Score one run against its qrels, exactly as beir does (rule evaluate)."""

import argparse
import logging
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.evaluation.metrics import aggregate, evaluate_run
from contriever_repro.io import read_table, write_table
from contriever_repro.provenance import metrics_rows, provenance

log = logging.getLogger("evaluate")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument("--qrels", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--unit", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--k-values", type=int, nargs="+", required=True)
    ap.add_argument("--drop-identical-ids", dest="drop", action="store_true", default=True)
    ap.add_argument("--keep-identical-ids", dest="drop", action="store_false")
    ap.add_argument("--config-hash", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-query", required=True)
    args = ap.parse_args()

    run = read_table(args.run, "run")
    qrels = read_table(args.qrels, "qrels")
    per_query = evaluate_run(run, qrels, args.k_values, ignore_identical_ids=args.drop)
    table = aggregate(per_query)
    ident = dict(model=args.model, dataset=args.dataset, unit=args.unit, split=args.split)
    repo = Path(__file__).resolve().parents[1]
    prov = provenance(args.config_hash, {"run": args.run, "qrels": args.qrels}, repo)
    table = metrics_rows(table, ident, args.run, prov)
    for metric in ("ndcg@10", "recall@100", "mrr@100"):
        hit = table.loc[table["metric"] == metric, "value"]
        if len(hit):
            log.info("%s %s %s = %.5f", args.model, args.unit, metric, hit.iloc[0])
    write_table(per_query.assign(**ident), args.per_query)
    write_table(table, args.out)


if __name__ == "__main__":
    run_main(main)
