"""Real data, real model: open-domain QA through the workflow.

The first 1,000 real NQ and TriviaQA test questions each (DPR's qa.csv form,
../shared/data/openqa; csv-quoted rows copied as they are)
retrieve from a passage collection cut from real Wikipedia lead sections into 100-word
passages as DPR did, encoded by the real all-MiniLM-L6-v2. The workflow's has_answer
decision on every (question, retrieved passage) pair must equal an independent
implementation of DPR's rule written here from its specification.
"""

from __future__ import annotations

import ast
import csv
import functools
import json
import unicodedata

import pandas as pd
import pytest
import regex

from contriever_repro.data.openqa import articles_from_lines, cut_into_passages, write_dpr_tsv
from workflow_utils import base_config, snakemake, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTICLES = 300  # lead sections -> ~750 passages
QUESTIONS = 1000  # the first 1,000 of each test set (the readers' tests count all of them)
TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\s\p{C}]")


@functools.cache
def spec_tokens(text: str) -> tuple[str, ...]:
    """DPR's SimpleTokenizer as its specification reads: NFD, then runs of letters,
    numbers and marks or single non-space non-control characters, lower-cased."""
    return tuple(t.lower() for t in TOKEN.findall(unicodedata.normalize("NFD", text)))


@functools.cache
def spec_sequence(text: str) -> str:
    """The token sequence as one string, each token closed by a NUL (tokens never hold
    one): a contiguous token sub-sequence is then exactly a substring."""
    return "".join(f"{t}\0" for t in spec_tokens(text))


def spec_has_answer(answers: list[str], text: str) -> bool:
    words = "\0" + spec_sequence(text)
    return any(
        spec_tokens(answer) and ("\0" + spec_sequence(answer)) in words for answer in answers
    )


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, shared_data, minilm_path):
    tmp = tmp_path_factory.mktemp("openqa")
    articles = articles_from_lines(
        shared_data / "text" / "wikipedia-summaries" / "en.txt", limit=ARTICLES
    )
    passages = cut_into_passages(articles, words=100)
    write_dpr_tsv(passages, tmp / "psgs_w100.tsv")
    questions = tmp / "questions"
    questions.mkdir()
    for name in ("nq-test", "trivia-test"):
        with open(shared_data / "openqa" / f"{name}.qa.tsv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))[:QUESTIONS]
        with open(questions / f"{name}.qa.tsv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t").writerows(rows)
    config = base_config(tmp) | {
        "label": "open-domain QA on real questions and Wikipedia leads",
        "datasets": {},
        "passage_collections": {
            "wiki-leads": {"source": "local", "path": str(tmp / "psgs_w100.tsv"), "shards": 2}
        },
        "qa_sets": {
            "nq-open": {
                "collection": "wiki-leads",
                "source": "local",
                "path": str(questions / "nq-test.qa.tsv"),
                "expected_questions": QUESTIONS,
            },
            "tqa-open": {
                "collection": "wiki-leads",
                "source": "local",
                "path": str(questions / "trivia-test.qa.tsv"),
                "expected_questions": QUESTIONS,
            },
        },
        "qa": {"top_k": 100, "k_values": [5, 20, 100]},
        "models": {
            "minilm": {
                "source": str(minilm_path),
                "pooling": "mean",
                "normalize": True,
                "score_function": "dot",
                "max_query_length": 64,
                "max_passage_length": 256,
                "batch_size": 128,
            }
        },
        "evaluation": {"top_k": 100, "k_values": [10], "ignore_identical_ids": True},
        "resources": {"default": {"gpu": 0, "cpus_per_task": 2, "mem_mb": 8000, "runtime": 60}},
        "tables": {
            "table-qa": {
                "caption": "NQ and TriviaQA over Wikipedia leads, all-MiniLM-L6-v2",
                "blocks": [{"metric": f"accuracy@{k}", "label": f"R@{k}"} for k in (5, 20, 100)],
                "datasets": ["nq-open", "tqa-open"],
                "columns": [{"name": "MiniLM", "model": "minilm"}],
            }
        },
    }
    cfg = write_config(tmp / "config.yaml", config)
    target = tmp / "results" / "table-qa.csv"
    proc = snakemake(str(target), "--configfile", str(cfg), "--cores", "2", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, passages, config


def test_approximate_index_is_built_searched_and_measured_against_exact(qa_run):
    """The same work folder with `qa.index` set: the embeddings are reused, an index is
    trained and filled from both shards, NQ is searched through it (candidates re-scored
    from the shards) and the exact search it is compared with recovers its top 100."""
    tmp, _, config = qa_run
    index = {"factory": "auto", "train_size": 1500, "rerank_depth": 300}
    config = config | {"qa": config["qa"] | {"index": index}}
    cfg = write_config(tmp / "config-ann.yaml", config)
    report = tmp / "results" / "index_recall" / "minilm" / "nq-open.json"
    proc = snakemake(str(report), "--configfile", str(cfg), "--cores", "2", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "rule build_index:" in log and "rule encode_corpus:" not in log
    meta = json.loads((tmp / "work" / "indexes" / "minilm" / "wiki-leads.json").read_text())
    assert meta["factory"].startswith("IVF") and len(meta["shards"]) == 2
    recall = json.loads(report.read_text())
    assert recall["recall"] > 0.9, recall


def test_accuracy_at_k_is_reported_and_rises_with_k(qa_run):
    tmp, _, _ = qa_run
    for dataset, n in (("nq-open", QUESTIONS), ("tqa-open", QUESTIONS)):
        table = pd.read_parquet(
            tmp / "work" / "metrics" / "minilm" / "datasets" / f"{dataset}.parquet"
        )
        values = dict(zip(table["metric"], table["value"], strict=True))
        assert 0 < values["accuracy@5"] <= values["accuracy@20"] <= values["accuracy@100"] < 1
        assert set(table["n_queries"]) == {n}
    csv_text = (tmp / "results" / "table-qa.csv").read_text()
    assert "accuracy@100,nq-open," in csv_text and "accuracy@5,tqa-open," in csv_text


def test_has_answer_equals_an_independent_implementation_on_every_pair(qa_run):
    tmp, passages, _ = qa_run
    texts = dict(zip(passages["doc_id"], passages["text"], strict=True))
    for dataset, name in (("nq-open", "nq-test"), ("tqa-open", "trivia-test")):
        with open(tmp / "questions" / f"{name}.qa.tsv", newline="", encoding="utf-8") as f:
            answers = {
                str(i): ast.literal_eval(row[1])
                for i, row in enumerate(csv.reader(f, delimiter="\t"))
            }
        hits = pd.read_parquet(
            tmp / "work" / "metrics" / "minilm" / "qa" / f"{dataset}.hits.parquet"
        )
        assert hits.groupby("query_id").size().max() == 100
        expected = [
            spec_has_answer(answers[q], texts[d])
            for q, d in zip(hits["query_id"], hits["doc_id"], strict=True)
        ]
        assert hits["has_answer"].tolist() == expected
        assert 0 < sum(expected) < len(expected)
