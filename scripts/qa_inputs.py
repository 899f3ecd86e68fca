"""Open-domain QA inputs as parquet (rules convert_passages, qa_questions, mkqa_questions):
DPR's passage tsv -> corpus; a question file -> queries + answers; MKQA -> one question
set per language, kept as the authors' filter keeps them and counted."""

import argparse
import json
import logging
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.data.mkqa import check_count, mkqa_questions, read_mkqa
from contriever_repro.data.openqa import convert_passages, read_questions
from contriever_repro.errors import InputError
from contriever_repro.evaluation.answers import checked_answer_tokens
from contriever_repro.io import write_table, write_text

log = logging.getLogger("qa_inputs")


def _check_answers(questions, where: str, normalize: bool) -> None:
    """Fail before anything is written on a question no answer of which can match."""
    for qid, answers in zip(questions["query_id"], questions["answers"], strict=True):
        checked_answer_tokens(qid, list(answers), where, normalize=normalize)


def _write_questions(questions, queries_path: str, answers_path: str) -> None:
    write_table(questions, answers_path, "answers")
    write_table(questions, queries_path, "queries")


def passages(args) -> None:
    n = convert_passages(args.input, args.out)
    log.info("%d passages -> %s", n, args.out)


def questions(args) -> None:
    table = read_questions(args.input, args.format)
    if args.expected and len(table) != args.expected:
        raise InputError(
            f"{len(table)} questions, expected {args.expected} "
            f"({len(table) - args.expected:+d}); fix qa_sets.<name>.expected_questions "
            "if this file is meant to differ",
            args.input,
        )
    _check_answers(table, args.input, normalize=args.normalize_answers)
    _write_questions(table, args.queries, args.answers)
    log.info("%d questions -> %s", len(table), args.queries)


def mkqa(args) -> None:
    languages = json.loads(args.languages)
    per_language = mkqa_questions(read_mkqa(args.input), languages, where=args.input)
    counts = {lang: len(table) for lang, table in per_language.items()}
    if args.expected:
        check_count(counts, args.expected, args.input)
    for lang, table in per_language.items():
        _check_answers(table, f"{args.input} ({lang})", normalize=args.normalize_answers)
    for lang, table in per_language.items():
        folder = Path(args.out_dir) / f"{args.prefix}{lang}"
        _write_questions(table, str(folder / "queries.parquet"), str(folder / "answers.parquet"))
    write_text(json.dumps(counts, indent=1) + "\n", args.counts)
    log.info("MKQA: %s questions per language", sorted(set(counts.values())))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("passages", help="DPR psgs_w100.tsv(.gz) -> corpus parquet")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    q = sub.add_parser("questions", help="FiD json/jsonl or DPR qa.csv -> queries + answers")
    q.add_argument("--input", required=True)
    q.add_argument("--format", default="auto", choices=["auto", "json", "jsonl", "qa-tsv"])
    q.add_argument("--expected", type=int, default=0, help="number of questions (0: any)")
    q.add_argument("--normalize-answers", action="store_true")
    q.add_argument("--queries", required=True)
    q.add_argument("--answers", required=True)
    m = sub.add_parser("mkqa", help="mkqa.jsonl(.gz) -> one question set per language")
    m.add_argument("--input", required=True)
    m.add_argument("--languages", required=True, help="JSON list of MKQA language codes")
    m.add_argument("--expected", type=int, default=0, help="kept per language (0: any)")
    m.add_argument("--out-dir", required=True)
    m.add_argument("--prefix", default="mkqa-")
    m.add_argument("--counts", required=True)
    m.add_argument("--normalize-answers", action="store_true")
    args = ap.parse_args()
    {"passages": passages, "questions": questions, "mkqa": mkqa}[args.what](args)


if __name__ == "__main__":
    run_main(main)
