"""Top-k retrieval accuracy of a question set's run (rule evaluate_qa): every retrieved
passage's has_answer decision is kept, with the per-question first hit and the metrics."""

import argparse
import logging
from pathlib import Path

import pandas as pd

from contriever_repro.cli import run_main
from contriever_repro.data.openqa import passage_texts
from contriever_repro.evaluation.answers import mark_hits, per_question_first_hit, top_k_accuracy
from contriever_repro.io import read_table, write_table
from contriever_repro.provenance import metrics_rows, provenance

log = logging.getLogger("evaluate_qa")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument("--answers", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--k-values", type=int, nargs="+", required=True)
    ap.add_argument("--normalize-answers", action="store_true")
    ap.add_argument("--config-hash", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--hits", required=True)
    ap.add_argument("--per-query", required=True)
    args = ap.parse_args()

    run = read_table(args.run, "run")
    answers_table = read_table(args.answers, "answers")
    answers = dict(zip(answers_table["query_id"], answers_table["answers"], strict=True))
    texts = passage_texts(args.corpus, set(run["doc_id"]))
    hits = mark_hits(run, answers, texts, normalize=args.normalize_answers, where=args.run)
    question_ids = list(answers_table["query_id"])
    metrics = top_k_accuracy(hits, question_ids, args.k_values)
    for metric, value in metrics.items():
        log.info("%s %s %s = %.4f", args.model, args.dataset, metric, value)
    ident = dict(model=args.model, dataset=args.dataset, unit=args.dataset, split="test")
    repo = Path(__file__).resolve().parents[1]
    prov = provenance(args.config_hash, {"run": args.run, "answers": args.answers}, repo)
    table = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
    table = metrics_rows(table.assign(n_queries=len(question_ids)), ident, args.run, prov)
    first = per_question_first_hit(hits, question_ids).rename("first_hit")
    first = first.rename_axis("query_id").reset_index()
    write_table(hits.assign(model=args.model, dataset=args.dataset), args.hits)
    write_table(first.assign(**ident), args.per_query)
    write_table(table, args.out)


if __name__ == "__main__":
    run_main(main)
