"""Paper-shaped tables: cell provenance, averages, "Best on", and the quoted numbers."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from contriever_repro.errors import InputError
from contriever_repro.io import write_table
from contriever_repro.reporting.tables import (
    BEST_ON,
    best_on_counts,
    build_long,
    build_table,
    load_paper_results,
    parse_table_spec,
    read_metrics,
    write_table_outputs,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_YAML = ROOT / "config" / "paper_results.yaml"
TABLES_YAML = ROOT / "config" / "config.yaml"  # the paper config holds the table specs
# The paper as text (shared with the project, outside the repository in some checkouts).
PAPER_TEXT = [p / "shared" / "paper" / "contriever-paper.txt" for p in (ROOT, ROOT.parent)]

DATASETS = ["msmarco", "trec-covid", "nq", "cqadupstack"]

# A tiny "paper": one quoted rival and the paper's numbers for our model.
PAPER = {
    "systems": {
        "rival": {
            "ndcg@10": {"msmarco": 30.0, "trec-covid": 60.0, "nq": 40.0, "cqadupstack": None},
            "recall@100": {"msmarco": 70.0, "trec-covid": 50.0, "nq": 80.0, "cqadupstack": 60.0},
            "averages": {"toy": {"ndcg@10": {"Avg. w/o CQA": 50.0, "Avg.": None}}},
            "best_on": {"toy": {"ndcg@10": 2}},
        },
        "ours": {
            "ndcg@10": {"msmarco": 40.0, "trec-covid": 50.0, "nq": 45.0, "cqadupstack": 30.0},
            "recall@100": {"msmarco": 90.0, "trec-covid": 40.0, "nq": 90.0, "cqadupstack": 65.0},
            "averages": {"toy": {"ndcg@10": {"Avg. w/o CQA": 47.5, "Avg.": 41.7}}},
            "best_on": {"toy": {"ndcg@10": 2}},
        },
    }
}

SPEC = {
    "caption": "Toy table",
    "paper_table": "toy",
    "blocks": [{"metric": "ndcg@10"}],
    "datasets": DATASETS,
    "averages": [
        {"name": "Avg. w/o CQA", "exclude": ["msmarco", "cqadupstack"]},
        {"name": "Avg.", "exclude": ["msmarco"]},
    ],
    "best_on": {"exclude": []},
    "columns": [
        {"name": "Rival", "paper": "rival"},
        {"name": "Ours", "model": "ours", "paper": "ours"},
    ],
}

METRIC_COLUMNS = [
    "model",
    "dataset",
    "split",
    "metric",
    "value",
    "n_queries",
    "run",
    "config_hash",
    "code_version",
]

# Computed nDCG@10 of `ours` (fractions): 41.0, 50.0, 45.0, 31.0 after x100.
OURS_NDCG = {"msmarco": 0.41, "trec-covid": 0.50, "nq": 0.45, "cqadupstack": 0.31}


def metrics_frame(values: dict[tuple[str, str, str], float]) -> pd.DataFrame:
    rows = [
        {
            "model": model,
            "dataset": ds,
            "split": "dev" if ds == "msmarco" else "test",
            "metric": metric,
            "value": value,
            "n_queries": 10,
            "run": f"runs/{model}/{ds}.parquet",
            "config_hash": "cafe01",
            "code_version": "v0-test",
        }
        for (model, ds, metric), value in values.items()
    ]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def ours_metrics(skip: str | None = None) -> pd.DataFrame:
    return metrics_frame({("ours", ds, "ndcg@10"): v for ds, v in OURS_NDCG.items() if ds != skip})


def cell(long: pd.DataFrame, row: str, column: str, block: str | None = None) -> dict:
    sel = (long["row"] == row) & (long["column"] == column)
    if block is not None:
        sel &= long["block"] == block
    found = long[sel]
    assert len(found) == 1, (row, column, block)
    return found.iloc[0].to_dict()


# --------------------------------------------------------------------------- cells


def test_dataset_cells_record_provenance_and_diff():
    long = build_long("toy", SPEC, ours_metrics(), PAPER)
    ours = cell(long, "msmarco", "Ours")
    assert ours["source"] == "computed"
    assert ours["value"] == pytest.approx(41.0)
    assert ours["paper_value"] == pytest.approx(40.0)
    assert ours["diff"] == pytest.approx(1.0)
    assert ours["metric"] == "ndcg@10"
    assert ours["run"] == "runs/ours/msmarco.parquet"
    assert ours["config_hash"] == "cafe01"
    assert ours["code_version"] == "v0-test"
    assert ours["split"] == "dev"
    rival = cell(long, "nq", "Rival")
    assert (rival["source"], rival["value"], rival["column_kind"]) == ("paper", 40.0, "quoted")
    assert math.isnan(rival["diff"])
    # "-" in the paper stays an empty quoted cell.
    dash = cell(long, "cqadupstack", "Rival")
    assert dash["source"] == "paper" and math.isnan(dash["value"])


def test_averages_with_exclusions():
    long = build_long("toy", SPEC, ours_metrics(), PAPER)
    no_cqa = cell(long, "Avg. w/o CQA", "Ours")
    assert no_cqa["value"] == pytest.approx((50.0 + 45.0) / 2)
    assert no_cqa["paper_value"] == pytest.approx(47.5)
    assert no_cqa["diff"] == pytest.approx(0.0)
    avg = cell(long, "Avg.", "Ours")
    assert avg["value"] == pytest.approx((50.0 + 45.0 + 31.0) / 3)
    assert avg["diff"] == pytest.approx((50.0 + 45.0 + 31.0) / 3 - 41.7)
    assert avg["config_hash"] == "cafe01"
    # Quoted columns show the paper's reported averages, "-" included.
    assert cell(long, "Avg. w/o CQA", "Rival")["value"] == 50.0
    reported_dash = cell(long, "Avg.", "Rival")
    assert reported_dash["source"] == "paper" and math.isnan(reported_dash["value"])


def test_missing_cell_makes_averages_and_best_on_missing():
    long = build_long("toy", SPEC, ours_metrics(skip="cqadupstack"), PAPER)
    assert cell(long, "cqadupstack", "Ours")["source"] == "missing"
    # The average leaving CQADupStack out is still complete ...
    assert cell(long, "Avg. w/o CQA", "Ours")["source"] == "computed"
    # ... the one that needs it is never averaged over fewer data sets.
    avg = cell(long, "Avg.", "Ours")
    assert avg["source"] == "missing" and math.isnan(avg["value"])
    assert avg["paper_value"] == pytest.approx(41.7)
    assert cell(long, BEST_ON, "Ours")["source"] == "missing"
    # Quoted cells do not depend on computed ones.
    assert cell(long, BEST_ON, "Rival")["value"] == 2


def test_trec_covid_override_uses_capped_recall():
    spec = {
        **SPEC,
        "blocks": [{"metric": "recall@100", "metric_overrides": {"trec-covid": "recall_cap@100"}}],
        "averages": [{"name": "Avg.", "exclude": ["msmarco"]}],
        "best_on": False,
    }
    values = {("ours", ds, "recall@100"): 0.5 for ds in DATASETS}
    values[("ours", "trec-covid", "recall@100")] = 0.05  # uncapped: must not be used
    values[("ours", "trec-covid", "recall_cap@100")] = 0.41
    long = build_long("toy", spec, metrics_frame(values), PAPER)
    tc = cell(long, "trec-covid", "Ours")
    assert tc["metric"] == "recall_cap@100" and tc["block"] == "recall@100"
    assert tc["value"] == pytest.approx(41.0)
    assert tc["paper_value"] == pytest.approx(40.0)  # the paper's R@100 is the capped one
    assert cell(long, "nq", "Ours")["metric"] == "recall@100"
    assert cell(long, "Avg.", "Ours")["value"] == pytest.approx((41.0 + 50.0 + 50.0) / 3)
    assert BEST_ON not in set(long["row"])
    # Without the capped metric the cell is missing, not silently the uncapped one.
    del values[("ours", "trec-covid", "recall_cap@100")]
    long = build_long("toy", spec, metrics_frame(values), PAPER)
    assert cell(long, "trec-covid", "Ours")["source"] == "missing"


def test_best_on_counts_ties_twins_and_exclusions():
    # Ours: 41.0, 50.0, 45.0, 31.0; Rival: 30.0, 60.0, 40.0, "-".
    long = build_long("toy", SPEC, ours_metrics(), PAPER)
    best = cell(long, BEST_ON, "Ours")
    assert best["value"] == 3  # msmarco, nq, and cqadupstack (the rival has "-")
    assert best["paper_value"] == 2 and best["diff"] == 1
    excluded = build_long(
        "toy", {**SPEC, "best_on": {"exclude": ["msmarco"]}}, ours_metrics(), PAPER
    )
    assert cell(excluded, BEST_ON, "Ours")["value"] == 2

    # Ties credit every tied column; the same system's quoted and computed columns do
    # not compete with each other; values are compared as displayed (0.1).
    counts = best_on_counts(
        {
            "A": [50.0, 10.0, 20.04],
            "A (computed)": [51.0, 11.0, 20.0],
            "B": [50.0, 12.0, 20.0],
            "C": [None, 1.0, math.nan],
        },
        {"A": "a", "A (computed)": "a", "B": "b", "C": "c"},
    )
    assert counts == {"A": 2, "A (computed)": 2, "B": 2, "C": 0}


def test_best_on_true_counts_every_dataset():
    spec = {**SPEC, "best_on": True}
    assert parse_table_spec("toy", spec, PAPER).best_on_exclude == ()
    assert parse_table_spec("toy", {**SPEC, "best_on": False}, PAPER).best_on_exclude is None


def test_computed_column_without_paper_system():
    spec = {**SPEC, "columns": [*SPEC["columns"], {"name": "Mine", "model": "ours"}]}
    built = build_table("toy", spec, ours_metrics(), PAPER)
    mine = cell(built.long, "nq", "Mine")
    assert mine["source"] == "computed" and math.isnan(mine["paper_value"])
    assert "Mine" in built.wide.columns and "Mine [paper]" not in built.wide.columns
    assert "| 45.0 |" in built.markdown


def test_computed_columns_compete_with_printed_values_only():
    """A computed column without a paper system is no rival, and its missing cells leave
    the other computed columns' counts alone."""
    mine = {("mine", ds, "ndcg@10"): 0.99 for ds in ["msmarco", "trec-covid", "nq"]}
    metrics = pd.concat([ours_metrics(), metrics_frame(mine)], ignore_index=True)
    spec = {**SPEC, "columns": [*SPEC["columns"], {"name": "Mine", "model": "mine"}]}
    long = build_long("toy", spec, metrics, PAPER)
    assert cell(long, BEST_ON, "Ours")["value"] == 3  # as without Mine
    assert cell(long, "cqadupstack", "Mine")["source"] == "missing"
    assert cell(long, BEST_ON, "Mine")["source"] == "missing"
    # With every cell, Mine beats the printed values of Rival and Ours everywhere: its
    # 30.0 on cqadupstack ties the printed Ours (30.0); the computed Ours (31.0) is no rival.
    mine[("mine", "cqadupstack", "ndcg@10")] = 0.30
    metrics = pd.concat([ours_metrics(), metrics_frame(mine)], ignore_index=True)
    long = build_long("toy", spec, metrics, PAPER)
    assert cell(long, BEST_ON, "Mine")["value"] == 4  # printed Ours on cqadupstack: 30.0
    assert cell(long, BEST_ON, "Ours")["value"] == 3
    markdown = build_table("toy", spec, metrics, PAPER).markdown
    assert "never with another computed column" in markdown


def test_best_on_without_any_paper_system_compares_computed_columns():
    """Nothing printed (the demo tables): computed columns rank among themselves."""
    spec = {
        **SPEC,
        "columns": [{"name": "Ours", "model": "ours"}, {"name": "Other", "model": "other"}],
    }
    other = {("other", ds, "ndcg@10"): 0.42 for ds in DATASETS}
    metrics = pd.concat([ours_metrics(), metrics_frame(other)], ignore_index=True)
    long = build_long("toy", spec, metrics, None)
    assert cell(long, BEST_ON, "Ours")["value"] == 2  # trec-covid 50, nq 45
    assert cell(long, BEST_ON, "Other")["value"] == 2  # msmarco 42, cqadupstack 42
    assert (
        "the computed columns compete with each other"
        in build_table("toy", spec, metrics, None).markdown
    )
    # A paper system that reports no value for the counted cells prints nothing either.
    quoting = {**spec, "blocks": [{"metric": "ndcg@100"}]}
    quoting["columns"] = [{**spec["columns"][0], "paper": "ours"}, spec["columns"][1]]
    at100 = {(m, d, "ndcg@100"): v for (m, d, _), v in metrics_values(metrics).items()}
    long = build_long("toy", quoting, metrics_frame(at100), PAPER)
    assert cell(long, BEST_ON, "Other")["value"] == 2
    del other[("other", "nq", "ndcg@10")]
    metrics = pd.concat([ours_metrics(), metrics_frame(other)], ignore_index=True)
    long = build_long("toy", spec, metrics, None)
    assert cell(long, BEST_ON, "Ours")["source"] == "missing"


def metrics_values(frame: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    return {(r["model"], r["dataset"], r["metric"]): r["value"] for r in frame.to_dict("records")}


def _paper_metrics(paper: dict, model: str, system: str, metric: str, **changed) -> dict:
    """(model, dataset, metric) -> the paper's value as a fraction; trec-covid's R@100 is
    the capped recall; `changed` replaces some values (x100, dashes for underscores)."""
    values = {}
    for ds, v in paper["systems"][system][metric].items():
        used = "recall_cap@100" if (metric, ds) == ("recall@100", "trec-covid") else metric
        values[(model, ds, used)] = changed.get(ds.replace("-", "_"), v) / 100
    return values


def test_table11_computed_bm25_does_not_take_a_win_from_contriever(paper):
    """Table 11 with a computed BM25 of 77.2 R@100 on NQ, above Contriever's printed 77.1:
    the released checkpoint (computed, the paper's values) keeps the paper's 10."""
    spec = yaml.safe_load(TABLES_YAML.read_text(encoding="utf-8"))["tables"]["table11"]
    values = _paper_metrics(paper, "contriever", "contriever", "recall@100")
    values |= _paper_metrics(paper, "bm25", "bm25", "recall@100", nq=77.2)
    long = build_long("table11", spec, metrics_frame(values), paper)
    contriever = cell(long, BEST_ON, "Contriever", block="recall@100")
    assert (contriever["value"], contriever["paper_value"]) == (10, 10)
    # The computed BM25 wins NQ against the printed Contriever: the paper's 3, plus one.
    assert cell(long, BEST_ON, "BM25 (computed)", block="recall@100")["value"] == 4
    assert cell(long, BEST_ON, "BM25", block="recall@100")["value"] == 3  # the paper's
    # The old rule (every column's shown value competes) gave Contriever 9.
    parsed = parse_table_spec("table11", spec, paper)
    rows = long[(long["block"] == "recall@100") & (long["row_kind"] == "dataset")]
    shown = {c.name: list(rows[rows["column"] == c.name]["value"]) for c in parsed.columns}
    old = best_on_counts(shown, {c.name: c.system for c in parsed.columns})
    assert old["Contriever"] == 9


def test_two_computed_columns_of_one_system_each_keep_the_papers_count(paper):
    """Table 2b's shape: the released and the reproduced checkpoint both quote
    contriever-msmarco; neither competes with the other."""
    config = yaml.safe_load(TABLES_YAML.read_text(encoding="utf-8"))
    spec = config["tables"]["table2b"]
    values = _paper_metrics(paper, "contriever-msmarco", "contriever-msmarco", "ndcg@10")
    # The fine-tuned-here model beats everything everywhere, the released one not.
    values |= {
        (m, ds, metric): min(1.0, v + 0.2)
        for (m, ds, metric), v in _paper_metrics(
            paper, "contriever-msmarco-ft", "contriever-msmarco", "ndcg@10"
        ).items()
    }
    # Both re-ranked columns computed with the paper's Ours+CE numbers.
    for model in ("contriever-msmarco-ce", "contriever-msmarco-ft-ce"):
        values |= _paper_metrics(paper, model, "contriever-msmarco-ce", "ndcg@10")
    long = build_long("table2b", spec, metrics_frame(values), paper)
    assert cell(long, BEST_ON, "Ours (released)")["value"] == 1  # the paper's count
    assert cell(long, BEST_ON, "Ours (fine-tuned here)")["value"] == 15
    assert cell(long, BEST_ON, "Ours+CE (released)")["value"] == 9
    assert cell(long, BEST_ON, "Ours+CE (fine-tuned here)")["value"] == 9


# --------------------------------------------------------------------------- model templates

TEMPLATE_SPEC = {
    "caption": "Few-shot toy",
    "blocks": [{"metric": "ndcg@10"}],
    "datasets": ["nq", "trec-covid"],
    "columns": [
        {"name": "Rival", "paper": "rival"},
        {"name": "Few-shot", "model": "fs-{dataset}", "paper": "ours"},
    ],
}


def test_model_template_reads_one_model_per_dataset():
    metrics = metrics_frame(
        {
            ("fs-nq", "nq", "ndcg@10"): 0.47,
            ("fs-trec-covid", "trec-covid", "ndcg@10"): 0.52,
            ("fs-nq", "trec-covid", "ndcg@10"): 0.99,  # another data set's model: unused
        }
    )
    parsed = parse_table_spec("toy", TEMPLATE_SPEC, PAPER)
    assert [parsed.columns[1].model_for(d) for d in parsed.datasets] == ["fs-nq", "fs-trec-covid"]
    long = build_long("toy", TEMPLATE_SPEC, metrics, PAPER)
    nq, tc = cell(long, "nq", "Few-shot"), cell(long, "trec-covid", "Few-shot")
    assert (nq["model"], nq["value"], nq["paper_value"]) == ("fs-nq", 47.0, 45.0)
    assert (tc["model"], tc["value"], tc["run"]) == (
        "fs-trec-covid",
        52.0,
        "runs/fs-trec-covid/trec-covid.parquet",
    )
    long = build_long("toy", TEMPLATE_SPEC, metrics.iloc[:1], PAPER)
    assert cell(long, "trec-covid", "Few-shot")["source"] == "missing"


@pytest.mark.parametrize("model", ["fs-{data}", "fs-{dataset}}", "fs-{", "{0}"])
def test_model_template_allows_only_the_dataset_placeholder(model):
    columns = [{"name": "Few-shot", "model": model}]
    with pytest.raises(
        InputError, match=r"tables\.toy\.columns\[0\] \('Few-shot'\)\.model: .*\{dataset\}"
    ):
        parse_table_spec("toy", {**TEMPLATE_SPEC, "columns": columns}, PAPER)


# --------------------------------------------------------------------------- wide and markdown


def test_wide_shape_and_column_names():
    built = build_table("toy", SPEC, ours_metrics(), PAPER)
    wide = built.wide
    assert list(wide.columns) == ["dataset", "Rival [paper]", "Ours", "Ours [paper]", "Ours [diff]"]
    assert list(wide["dataset"]) == [*DATASETS, "Avg. w/o CQA", "Avg.", BEST_ON]
    avg = wide.set_index("dataset").loc["Avg."]
    assert avg["Ours"] == 42.0  # 126 / 3, rounded to one decimal
    assert avg["Ours [paper]"] == 41.7
    assert avg["Ours [diff]"] == 0.3  # difference of the displayed numbers
    assert math.isnan(avg["Rival [paper]"])


def test_wide_multi_block_has_metric_column():
    spec = {**SPEC, "blocks": [{"metric": "recall@100"}, {"metric": "ndcg@10"}], "averages": []}
    values = {("ours", ds, m): 0.5 for ds in DATASETS for m in ("recall@100", "ndcg@10")}
    built = build_table("toy", {**spec, "best_on": False}, metrics_frame(values), PAPER)
    assert built.wide.columns[0] == "metric"
    assert list(built.wide["metric"]) == ["recall@100"] * 4 + ["ndcg@10"] * 4
    assert built.markdown.count("| Dataset |") == 2


def test_markdown_markers_caption_and_config_hash():
    built = build_table("toy", SPEC, ours_metrics(skip="nq"), PAPER, label="demo")
    md = built.markdown
    assert md.startswith("**[demo] Toy table**")
    assert "41.0 (paper 40.0, +1.0)" in md
    assert "50.0 (paper 50.0, +0.0)" in md
    assert "30.0†" in md and "† quoted from the paper" in md
    assert "missing (paper 45.0)" in md
    assert "`cafe01`" in md and "v0-test" in md


def test_markdown_marks_overridden_rows():
    spec = {
        **SPEC,
        "blocks": [{"metric": "recall@100", "metric_overrides": {"trec-covid": "recall_cap@100"}}],
    }
    md = build_table("toy", spec, metrics_frame({}), PAPER).markdown
    assert "| trec-covid‡ |" in md and "recall_cap@100" in md
    assert "No computed cells yet." in md


def test_write_table_outputs(tmp_path):
    built = build_table("toy", SPEC, ours_metrics(), PAPER)
    csv, parquet, md = tmp_path / "t.csv", tmp_path / "t.parquet", tmp_path / "t.md"
    write_table_outputs(built, csv, parquet, md)
    back = pd.read_parquet(parquet)
    assert len(back) == len(built.long) and set(back["source"]) == {"computed", "paper"}
    assert pd.read_csv(csv, comment="#").columns[0] == "dataset"
    assert csv.read_text(encoding="utf-8") == built.csv
    assert md.read_text(encoding="utf-8") == built.markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md", "t.parquet"]


def test_csv_opens_with_caption_and_label_comments(tmp_path):
    """The CSV says what it is (and that a demo is a demo) in lines CSV readers skip."""
    built = build_table("toy", SPEC, ours_metrics(), PAPER, label="demo (synthetic)")
    lines = built.csv.splitlines()
    assert lines[0] == "# [demo (synthetic)] Toy table"
    assert lines[1].startswith("# Values x100, one decimal;") and "Best on" in lines[1]
    assert lines[2] == "dataset,Rival [paper],Ours,Ours [paper],Ours [diff]"
    csv = tmp_path / "t.csv"
    write_table_outputs(built, csv, tmp_path / "t.parquet", tmp_path / "t.md")
    back = pd.read_csv(csv, comment="#")
    assert list(back.columns) == list(built.wide.columns)
    pd.testing.assert_frame_equal(back, built.wide, check_dtype=False)
    # A multi-line caption stays commented line by line; no label, no label brackets.
    two = build_table("toy", {**SPEC, "caption": "Toy\nsecond line"}, ours_metrics(), PAPER)
    assert two.csv.splitlines()[:2] == ["# Toy", "# second line"]


def test_csv_prints_best_on_as_integers_and_values_with_one_decimal():
    built = build_table("toy", SPEC, ours_metrics(), PAPER)
    rows = {line.split(",")[0]: line for line in built.csv.splitlines() if "," in line}
    # Ours beats the rival on msmarco and nq, and has no rival on cqadupstack (the paper's
    # "-"): 3 wins, the paper's count is 2, the rival's quoted count 2.
    assert rows[BEST_ON] == "Best on,2,3,2,1"
    assert rows["Avg."] == "Avg.,,42.0,41.7,0.3"
    assert rows["nq"] == "nq,40.0,45.0,45.0,0.0"
    assert ".0," not in rows[BEST_ON] + ","


@pytest.mark.parametrize(
    "change",
    [
        {"columns": [{"name": "Ours #2", "model": "ours"}]},
        {"averages": [{"name": "Avg. #1", "exclude": []}]},
        {"datasets": ["nq", "c#"]},
    ],
)
def test_names_with_a_csv_comment_character_are_refused(change):
    with pytest.raises(InputError, match="'#' is not allowed"):
        parse_table_spec("toy", {**SPEC, **change, "best_on": False}, None)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"columns": [{"name": "X", "paper": "nope"}]}, "columns[0] ('X').paper"),
        ({"columns": [{"name": "X"}]}, "names neither `model`"),
        (
            {"columns": [{"name": "X", "paper": "rival"}, {"name": "X", "model": "m"}]},
            "duplicated column name 'X'",
        ),
        ({"blocks": [{"metric": "ndcg10"}]}, "blocks[0].metric: unknown metric 'ndcg10'"),
        (
            {"blocks": [{"metric": "ndcg@10", "metric_overrides": {"nq": "bogus@3"}}]},
            "metric_overrides.nq: unknown metric",
        ),
        ({"blocks": [{"metric": "map@100"}]}, "reports no ['map@100']"),
        ({"averages": [{"name": "Avg.", "exclude": ["fever"]}]}, "averages[0].exclude"),
        ({"best_on": {"exclude": ["fever"]}}, "best_on.exclude"),
        ({"colums": []}, "unknown key(s) ['colums']"),
        ({"datasets": []}, "datasets: required"),
    ],
)
def test_bad_specs_name_table_and_key(change, needle):
    with pytest.raises(InputError) as err:
        parse_table_spec("toy", {**SPEC, **change}, PAPER)
    assert "tables.toy." in str(err.value)
    assert needle in str(err.value)


def test_bad_metrics_frames():
    doubled = pd.concat([ours_metrics(), ours_metrics()])
    with pytest.raises(InputError, match="two rows"):
        build_long("toy", SPEC, doubled, PAPER)
    percent = metrics_frame({("ours", "nq", "ndcg@10"): 45.0})
    with pytest.raises(InputError, match="fraction"):
        build_long("toy", SPEC, percent, PAPER)
    with pytest.raises(InputError, match="missing columns"):
        build_long("toy", SPEC, pd.DataFrame({"model": []}), PAPER)


def test_quoted_columns_need_paper_results():
    with pytest.raises(InputError, match="no paper results"):
        build_long("toy", SPEC, ours_metrics(), None)
    computed_only = {**SPEC, "columns": [{"name": "Ours", "model": "ours"}]}
    long = build_long("toy", computed_only, ours_metrics(), None)
    assert set(long["source"]) == {"computed"}


def test_unreported_average_of_a_quoted_column_is_missing():
    spec = {**SPEC, "averages": [{"name": "Median", "exclude": []}]}
    long = build_long("toy", spec, ours_metrics(), PAPER)
    assert cell(long, "Median", "Rival")["source"] == "missing"
    assert cell(long, "Median", "Ours")["source"] == "computed"


def test_read_metrics_concatenates_parquet_files(tmp_path):
    frame = ours_metrics()
    for i, (_, row) in enumerate(frame.iterrows()):
        write_table(row.to_frame().T.astype(frame.dtypes.to_dict()), tmp_path / f"m{i}.parquet")
    back = read_metrics(sorted(tmp_path.glob("*.parquet")))
    assert len(back) == len(frame)
    long = build_long("toy", SPEC, back, PAPER)
    assert cell(long, "nq", "Ours")["value"] == pytest.approx(45.0)
    assert list(read_metrics([]).columns)[:4] == ["model", "dataset", "metric", "value"]


# --------------------------------------------------------------------------- the paper's numbers


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_paper_results(PAPER_YAML)


def _table_datasets(paper: dict, table: str) -> list[str]:
    """The data sets a paper table shows: its own `datasets`, else all of BEIR."""
    return paper["tables"][table].get("datasets", paper["datasets"])


def test_paper_results_shape(paper):
    assert len(paper["datasets"]) == 15
    assert paper["qa_datasets"] == ["nq-open", "tqa-open"]
    assert len(paper["mkqa_datasets"]) == 26
    # every table's rows, in the paper's order: BEIR, open-domain QA, MKQA languages
    datasets = [
        *paper["datasets"],
        *paper["qa_datasets"],
        *paper["mkqa_datasets"],
        *paper["mrtydi_datasets"],
    ]
    for table, meta in paper["tables"].items():
        shown = _table_datasets(paper, table)
        # BEIR names, each once, in the paper's column order (Table 3's is not BEIR's).
        assert set(shown) <= set(datasets) and len(set(shown)) == len(shown), table
        if table != "table3":
            assert shown == [d for d in datasets if d in shown], table
        for exclude in meta["averages"].values():
            assert set(exclude) < set(shown), table
    for key, system in paper["systems"].items():
        assert system["label"] and system["source"]
        tables = [t for t, meta in paper["tables"].items() if key in meta["systems"]]
        assert tables, key
        averaged = [t for t in tables if paper["tables"][t]["averages"]]  # Table 3: none
        assert sorted(system.get("averages", {})) == sorted(averaged), key
        ranked = [t for t in tables if paper["tables"][t]["best_on_exclude"] is not None]
        assert sorted(system.get("best_on", {})) == sorted(ranked), key
        for table in tables:
            for metric in paper["tables"][table]["metrics"]:
                shown = set().union(
                    *(
                        _table_datasets(paper, t)
                        for t in tables
                        if metric in paper["tables"][t]["metrics"]
                    )
                )
                assert list(system[metric]) == [d for d in datasets if d in shown], (key, metric)
                assert all(v is None or 0 <= v <= 100 for v in system[metric].values())
                if table in averaged:
                    reported = system["averages"][table][metric]
                    assert sorted(reported) == sorted(paper["tables"][table]["averages"]), key
                if table in ranked:
                    assert metric in system["best_on"][table]


def test_paper_averages_match_per_dataset_values(paper):
    """Re-derive every reported average: catches transcription errors."""
    known = {
        (k["table"], k["system"], k["metric"], k["average"]) for k in paper["known_inconsistencies"]
    }
    off, checked = set(), 0
    for table, meta in paper["tables"].items():
        shown = _table_datasets(paper, table)
        for key in meta["systems"]:
            system = paper["systems"][key]
            for metric in meta["metrics"]:
                for avg_name, exclude in meta["averages"].items():
                    reported = system["averages"][table][metric][avg_name]
                    values = [system[metric][d] for d in shown if d not in exclude]
                    if reported is None:
                        assert None in values, (table, key, metric, avg_name)
                        continue
                    checked += 1
                    mean = sum(values) / len(values)
                    if abs(mean - reported) > 0.1 + 1e-9:
                        off.add((table, key, metric, avg_name))
    # Tables 2, 10, 11; 6, 7, 8; 9; MKQA 5, 13, 14; Mr. TyDi 4, 15 (Tables 1, 3 have none)
    assert checked == 44 + 10 + 2 + 8 + 4 + 4 + 14 + 12
    assert off == known


def test_known_inconsistencies_quote_the_printed_value(paper):
    """Each entry's `reported` is the stored average and its note gives the computed mean."""
    for k in paper["known_inconsistencies"]:
        system = paper["systems"][k["system"]]
        assert system["averages"][k["table"]][k["metric"]][k["average"]] == k["reported"]
        exclude = paper["tables"][k["table"]]["averages"][k["average"]]
        values = [
            system[k["metric"]][d] for d in _table_datasets(paper, k["table"]) if d not in exclude
        ]
        assert f"{sum(values) / len(values):.1f}" in k["note"], k


def test_paper_best_on_matches_per_dataset_values(paper):
    """Re-count every "Best on" row with the documented convention."""
    for table, meta in paper["tables"].items():
        if meta["best_on_exclude"] is None:  # the ablation tables print no "Best on"
            continue
        counted = [d for d in _table_datasets(paper, table) if d not in meta["best_on_exclude"]]
        for metric in meta["metrics"]:
            systems = meta["systems"]
            counts = best_on_counts(
                {s: [paper["systems"][s][metric][d] for d in counted] for s in systems},
                {s: s for s in systems},
            )
            reported = {s: paper["systems"][s]["best_on"][table][metric] for s in systems}
            assert counts == reported, (table, metric)


# The ablation tables' rows exactly as the paper text prints them (tab-separated), with the
# system each row is stored under. The test checks these lines against the paper text when
# it is available, and the stored numbers against these lines always.
ABLATION_ROWS = {
    "table6": (
        "\tNFCorpus\tNQ\tFiQA\tArguAna\tQuora\tDBPedia\tSciDocs\tFEVER\tAVG",
        {
            "ablation-moco": "MoCo\t26.2\t13.1\t13.7\t33.0\t69.5\t20.0\t11.9\t57.6\t30.1",
            "ablation-inbatch": (
                "In-batch negatives\t24.2\t21.6\t13.0\t33.7\t74.9\t17.9\t13.6\t56.1\t31.9"
            ),
        },
    ),
    "table7": (
        "\tNFCorpus\tNQ\tArguAna\tQuora\tDBPedia\tSciDocs\tFEVER\tOverall",
        {
            "ablation-ict": "ICT\t23.2\t19.4\t31.6\t27.6\t21.3\t10.6\t55.6\t25.9",
            "ablation-crop": "Crop\t27.6\t17.7\t35.6\t75.4\t21.0\t13.3\t64.5\t32.2",
            "ablation-crop-delete": (
                "Crop + delete\t26.8\t20.8\t35.8\t77.3\t21.5\t14.0\t67.9\t33.8"
            ),
            "ablation-crop-replace": (
                "Crop + replace\t27.7\t18.7\t36.2\t75.6\t22.0\t13.0\t66.8\t32.9"
            ),
        },
    ),
    "table8": (
        "\tNFCorpus\tNQ\tFiQA\tArguAna\tQuora\tDBPedia\tSciDocs\tFEVER\tOverall",
        {
            "ablation-wiki": "Wiki\t27.6\t17.7\t16.3\t35.6\t75.4\t21.0\t13.3\t64.5\t33.0",
            "ablation-ccnet": "CCNet\t29.5\t25.8\t26.2\t35.2\t80.6\t20.5\t14.9\t60.9\t34.9",
            "ablation-uniform": ("Uniform\t31.0\t19.4\t25.1\t37.8\t80.4\t21.5\t14.7\t59.8\t33.9"),
            "ablation-5050": "50/50%\t31.5\t18.6\t23.3\t36.2\t79.1\t22.1\t13.7\t64.1\t34.7",
        },
    ),
    "table9": (
        "\tNFCorpus\tNQ\tFiQA\tArguAna\tQuora\tDBPedia\tSciDocs\tFEVER\tOverall",
        {
            "bert-ft-ablation": "BERT\t28.2\t44.6\t25.9\t35.0\t84.0\t34.4\t13.0\t69.8\t42.0",
            "contriever-ft-ablation": (
                "Contriever\t33.2\t50.2\t28.8\t46.0\t85.4\t38.8\t16.0\t77.7\t46.5"
            ),
        },
    ),
}
# Table 3 as the paper text prints it: header, "Additional data" per row, then the values.
TABLE3_ROWS = (
    "\tAdditional data\tSciFact\tNFCorpus\tFiQA",
    {
        "bm25": "BM25\t-\t66.5\t32.5\t23.6",
        "fewshot-bert": "BERT\t-\t75.2\t29.9\t26.1",
        "fewshot-contriever": "Contriever\t-\t84.0\t33.6\t36.4",
        "fewshot-bert-msmarco": "BERT\tMS MARCO\t80.9\t33.2\t30.9",
        "fewshot-contriever-msmarco": "Contriever\tMS MARCO\t84.8\t35.8\t38.1",
    },
)
# The paper's column headers, as BEIR data-set names.
PAPER_COLUMNS = {
    "NFCorpus": "nfcorpus",
    "NQ": "nq",
    "FiQA": "fiqa",
    "ArguAna": "arguana",
    "Quora": "quora",
    "DBPedia": "dbpedia-entity",
    "SciDocs": "scidocs",
    "FEVER": "fever",
    "SciFact": "scifact",
}


def test_ablation_rows_are_the_paper_text():
    found = [p for p in PAPER_TEXT if p.exists()]
    if not found:
        pytest.skip("paper text not available")
    lines = set(found[0].read_text(encoding="utf-8").splitlines())
    for table, (header, rows) in [*ABLATION_ROWS.items(), ("table3", TABLE3_ROWS)]:
        assert header in lines, table
        for line in rows.values():
            assert line in lines, (table, line)
    # Tables 3 and 9: the header and rows follow the table's caption, in this order (Table
    # 9's header is also Table 8's, and "BERT" rows are in Tables 3, 9 and 11).
    text = found[0].read_text(encoding="utf-8")
    for number, (header, rows) in [(9, ABLATION_ROWS["table9"]), (3, TABLE3_ROWS)]:
        start = text.index(f"Table {number}: **")
        at = [text.index(f"{line}\n", start) for line in (header, *rows.values())]
        assert at == sorted(at) and at[-1] - at[0] < 500, number


def test_table3_is_transcribed_as_printed(paper):
    header, rows = TABLE3_ROWS
    datasets = [PAPER_COLUMNS[c] for c in header.split("\t")[2:]]
    meta = paper["tables"]["table3"]
    assert meta["datasets"] == datasets == ["scifact", "nfcorpus", "fiqa"]
    assert meta["systems"] == list(rows)
    assert meta["metrics"] == ["ndcg@10"]
    assert (meta["averages"], meta["best_on_exclude"]) == ({}, None)
    for key, line in rows.items():
        name, extra, *values = line.split("\t")
        system = paper["systems"][key]
        stored = system["ndcg@10"]
        assert {d: stored[d] for d in datasets} == dict(
            zip(datasets, [float(v) for v in values], strict=True)
        ), key
        # The "Additional data" column: MS MARCO exactly for the -msmarco systems.
        assert (extra == "MS MARCO") == key.endswith("-msmarco"), key
        assert "table3" not in system.get("averages", {}), key


@pytest.mark.parametrize("table", sorted(ABLATION_ROWS))
def test_ablation_tables_are_transcribed_as_printed(paper, table):
    header, rows = ABLATION_ROWS[table]
    *columns, avg_label = header.split("\t")[1:]
    datasets = [PAPER_COLUMNS[c] for c in columns]
    meta = paper["tables"][table]
    assert meta["datasets"] == datasets
    assert meta["systems"] == list(rows)
    (avg_name,) = meta["averages"]
    assert avg_name == {"AVG": "Avg.", "Overall": "Overall"}[avg_label]
    for key, line in rows.items():
        *values, average = [float(v) for v in line.split("\t")[1:]]
        system = paper["systems"][key]
        assert system["ndcg@10"] == dict(zip(datasets, values, strict=True)), key
        assert system["averages"] == {table: {"ndcg@10": {avg_name: average}}}, key


# Table 1 as the paper text prints it (systems as rows; NQ R@5/20/100, then TriviaQA).
TABLE1_ROWS = {
    "ict": "Inverse Cloze Task (Sachan et al., 2021b)",
    "mss": "Masked salient spans (Sachan et al., 2021b)",
    "bm25-ma": "BM25 (Ma et al., 2021)",
    "contriever": "Contriever",
    "dpr-openqa": "Supervised topline: DPR (Karpukhin et al., 2020)",
}
# The MKQA rows: Table 13/14 name mContriever "Contriever", Table 5 "mContriever".
MKQA_ROWS = {
    "cora": ("CORA", "CORA"),
    "mbert-msmarco": ("mBERT + MS MARCO", "mBERT + MS MARCO"),
    "mcontriever": ("Contriever", "mContriever"),
    "mcontriever-msmarco": ("+ MS MARCO", "+ MS MARCO"),
}
TABLE5_LANGUAGES = ["en", "ar", "ja", "ko", "es", "he", "de"]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _paper_section(number: int) -> str:
    found = [p for p in PAPER_TEXT if p.exists()]
    if not found:
        pytest.skip("paper text not available")
    text = found[0].read_text(encoding="utf-8")
    start = text.index(f"Table {number}: ")
    return text[start : start + 3000]


def test_table1_is_the_paper_text(paper):
    section = _paper_section(1)
    assert paper["tables"]["table1"]["systems"] == list(TABLE1_ROWS)
    for key, label in TABLE1_ROWS.items():
        system = paper["systems"][key]
        values = [
            system[f"accuracy@{k}"][ds] for ds in ("nq-open", "tqa-open") for k in (5, 20, 100)
        ]
        assert "\t".join([label, *map(_fmt, values)]) + "\n" in section, key


@pytest.mark.parametrize("number,metric", [(13, "accuracy@100"), (14, "accuracy@20")])
def test_mkqa_tables_13_and_14_are_the_paper_text(paper, number, metric):
    """Each printed row is split in two: average and 13 languages, then 13 more."""
    section = _paper_section(number)
    languages = paper["mkqa_datasets"]
    for key, (label, _) in MKQA_ROWS.items():
        system = paper["systems"][key]
        values = [_fmt(system[metric][ds]) for ds in languages]
        average = system["averages"][f"table{number}"][metric]["Avg."]
        first = "\t".join([label, _fmt(average), *values[:13]])
        second = "\t".join([label, "", *values[13:]])
        assert f"{first}\n" in section and f"{second}\n" in section, key


def test_mkqa_table5_is_the_paper_text_and_agrees_with_tables_13_and_14(paper):
    section = _paper_section(5)
    for key, (_, label) in MKQA_ROWS.items():
        system = paper["systems"][key]
        averages = system["averages"]
        r20, r100 = (
            averages["table5"]["accuracy@20"]["Avg."],
            averages["table5"]["accuracy@100"]["Avg."],
        )
        assert (r20, r100) == (
            averages["table14"]["accuracy@20"]["Avg."],
            averages["table13"]["accuracy@100"]["Avg."],
        )
        langs = [_fmt(system["accuracy@100"][f"mkqa-{lang}"]) for lang in TABLE5_LANGUAGES]
        assert "\t".join([label, _fmt(r20), _fmt(r100), *langs]) + "\n" in section, key


TABLE4_ROWS = {
    "bm25-mrtydi": "BM25 (Zhang et al., 2021)",
    "mdpr": "mDPR (Zhang et al., 2021)",
    "hybrid-mrtydi": "Hybrid (Zhang et al., 2021)",
    "mbert-msmarco": "mBERT + MS MARCO",
    "mcontriever": "mContriever",
    "mcontriever-msmarco": "+ MS MARCO",
    "mcontriever-mrtydi": "+ Mr. Tydi",
}
# Table 15: (pre-training languages, stage) of each system; the paper prints the stages
# as sub-headings ("+ MS MARCO", "+ Mr. TyDi") above two rows, "11 languages", "29 languages".
TABLE15_ROWS = {
    "mcontriever-11": ("11 languages", 0),
    "mcontriever": ("29 languages", 0),
    "mcontriever-11-msmarco": ("11 languages", 1),
    "mcontriever-msmarco": ("29 languages", 1),
    "mcontriever-11-mrtydi": ("11 languages", 2),
    "mcontriever-mrtydi": ("29 languages", 2),
}


def _row(label: str, system: dict, metric: str, table: str, paper: dict) -> str:
    values = [system[metric][d] for d in paper["mrtydi_datasets"]]
    average = system["averages"][table][metric]["Avg."]
    return "\t".join([label, *map(_fmt, values), _fmt(average)])


def test_mrtydi_table4_is_the_paper_text(paper):
    """Each block (MRR@100, then Recall@100) prints the seven rows in order."""
    section = _paper_section(4)
    assert paper["tables"]["table4"]["systems"] == list(TABLE4_ROWS)
    languages = ["ar", "bn", "en", "fi", "id", "ja", "ko", "ru", "sw", "te", "th"]
    assert paper["mrtydi_datasets"] == [f"mrtydi-{c}" for c in languages]
    header = "\t" + "\t".join([*languages, "avg"])
    assert header in section
    at = []
    for metric, heading in (("mrr@100", "MRR@100"), ("recall@100", "Recall@100")):
        at.append(section.index(heading, at[-1] if at else 0))
        for key, label in TABLE4_ROWS.items():
            line = _row(label, paper["systems"][key], metric, "table4", paper)
            at.append(section.index(f"{line}\n", at[-1]))
    assert at == sorted(at)


def test_mrtydi_table15_is_the_paper_text_and_shares_table4s_rows(paper):
    found = [p for p in PAPER_TEXT if p.exists()]
    if not found:
        pytest.skip("paper text not available")
    text = found[0].read_text(encoding="utf-8")
    section = text[text.index("Table 15: ") :]
    assert paper["tables"]["table15"]["systems"] == list(TABLE15_ROWS)
    at = 0
    for metric, heading in (("mrr@100", "MRR@100"), ("recall@100", "R@100")):
        at = section.index(f"{heading}\t", at)
        for stage in range(3):
            for key, (label, row_stage) in TABLE15_ROWS.items():
                if row_stage == stage:
                    line = _row(label, paper["systems"][key], metric, "table15", paper)
                    at = section.index(f"{line}", at)
    # The 29-language rows are Table 4's mContriever rows: one system, one set of numbers.
    for key in ("mcontriever", "mcontriever-msmarco", "mcontriever-mrtydi"):
        averages = paper["systems"][key]["averages"]
        assert averages["table4"] == averages["table15"], key


def test_table7_crop_and_table8_wiki_are_the_same_model(paper):
    crop = paper["systems"]["ablation-crop"]["ndcg@10"]
    wiki = paper["systems"]["ablation-wiki"]["ndcg@10"]
    assert set(crop) < set(wiki)
    assert crop == {d: wiki[d] for d in crop}


def ablation_metrics(model: str, values: dict[str, float]) -> pd.DataFrame:
    return metrics_frame({(model, ds, "ndcg@10"): v for ds, v in values.items()})


TABLE6_DATASETS = [
    "nfcorpus",
    "nq",
    "fiqa",
    "arguana",
    "quora",
    "dbpedia-entity",
    "scidocs",
    "fever",
]
TABLE6_SPEC = {
    "caption": "MoCo vs. in-batch negatives (paper Table 6)",
    "paper_table": "table6",
    "blocks": [{"metric": "ndcg@10", "label": "nDCG@10"}],
    "datasets": TABLE6_DATASETS,
    "averages": [{"name": "Avg.", "exclude": []}],
    "columns": [
        {"name": "MoCo", "paper": "ablation-moco"},
        {"name": "MoCo (computed)", "model": "moco-4096", "paper": "ablation-moco"},
    ],
}


def test_ablation_table_quotes_the_printed_average_and_computes_the_mean(tmp_path, paper):
    """The quoted column shows the paper's 30.1; the computed one the mean over its 8 cells."""
    fractions = [0.25, 0.15, 0.14, 0.33, 0.70, 0.20, 0.12, 0.59]
    computed = dict(zip(TABLE6_DATASETS, fractions, strict=True))
    built = build_table("table6", TABLE6_SPEC, ablation_metrics("moco-4096", computed), paper)
    long = built.long
    nq = cell(long, "nq", "MoCo (computed)")
    assert nq["value"] == pytest.approx(15.0)
    assert nq["paper_value"] == pytest.approx(13.1)
    assert nq["diff"] == pytest.approx(1.9)
    assert cell(long, "quora", "MoCo")["value"] == 69.5
    avg = cell(long, "Avg.", "MoCo (computed)")
    mean = 100 * sum(computed.values()) / 8  # 31.0: the 8 data sets, nothing else
    assert avg["value"] == pytest.approx(mean)
    assert avg["paper_value"] == pytest.approx(30.1)  # as printed, not the cells' 30.6
    assert avg["diff"] == pytest.approx(mean - 30.1)
    quoted_avg = cell(long, "Avg.", "MoCo")
    assert (quoted_avg["source"], quoted_avg["value"]) == ("paper", 30.1)
    assert BEST_ON not in set(long["row"])

    wide = built.wide.set_index("dataset")
    assert list(wide.index) == [*TABLE6_DATASETS, "Avg."]
    assert wide.loc["Avg.", "MoCo [paper]"] == 30.1
    assert wide.loc["Avg.", "MoCo (computed)"] == 31.0
    assert wide.loc["Avg.", "MoCo (computed) [diff]"] == 0.9
    assert "| Avg. | 30.1† | 31.0 (paper 30.1, +0.9) |" in built.markdown
    assert "| nq | 13.1† | 15.0 (paper 13.1, +1.9) |" in built.markdown

    csv, parquet, md = tmp_path / "t6.csv", tmp_path / "t6.parquet", tmp_path / "t6.md"
    write_table_outputs(built, csv, parquet, md)
    back = pd.read_csv(csv, comment="#").set_index("dataset")
    assert back.loc["Avg.", "MoCo (computed)"] == 31.0
    assert back.loc["fever", "MoCo [paper]"] == 57.6
    assert md.read_text(encoding="utf-8") == built.markdown

    # One missing data set makes the computed average missing, never a mean over 7.
    del computed["fever"]
    long = build_long("table6", TABLE6_SPEC, ablation_metrics("moco-4096", computed), paper)
    assert cell(long, "Avg.", "MoCo (computed)")["source"] == "missing"


def test_ablation_quoted_columns_need_the_shown_data_sets(paper):
    """Table 7 shows no FiQA: a quoted Crop column over Table 8's data sets is refused."""
    spec = {
        **TABLE6_SPEC,
        "paper_table": "table7",
        "averages": [{"name": "Overall", "exclude": []}],
        "columns": [{"name": "Crop", "paper": "ablation-crop"}],
    }
    with pytest.raises(InputError, match=r"has no ndcg@10 for \['fiqa'\]"):
        parse_table_spec("table7", spec, paper)
    spec["datasets"] = [d for d in TABLE6_DATASETS if d != "fiqa"]
    long = build_long("table7", spec, metrics_frame({}), paper)
    assert cell(long, "Overall", "Crop")["value"] == 32.2


def test_paper_table_specs_reproduce_the_paper_from_paper_valued_metrics(paper):
    """Computed columns fed the paper's own numbers land on the paper's averages and counts.

    Averages the paper misprints (known_inconsistencies) are the only ones allowed to differ.
    """
    config = yaml.safe_load(TABLES_YAML.read_text(encoding="utf-8"))
    known = {
        (k["table"], k["system"], k["metric"], k["average"]) for k in paper["known_inconsistencies"]
    }
    values: dict[tuple[str, str, str], float] = {}
    # Table 12 lists languages, not metrics (tests/test_languages_table.py).
    config["tables"] = {n: s for n, s in config["tables"].items() if s.get("kind") != "languages"}
    for name, spec in config["tables"].items():
        parsed = parse_table_spec(name, spec, paper)
        for col in parsed.columns:
            if not (col.computed and col.paper):
                continue
            for block in parsed.blocks:
                quoted = paper["systems"][col.paper].get(block.metric, {})
                for ds in parsed.datasets:
                    if quoted.get(ds) is not None:
                        key = (col.model_for(ds), ds, block.metric_for(ds))
                        assert values.setdefault(key, quoted[ds] / 100) == quoted[ds] / 100, key
    metrics = metrics_frame(values)
    for name, spec in config["tables"].items():
        parsed = parse_table_spec(name, spec, paper)
        long = build_table(name, spec, metrics, paper).long
        computed = long[(long["column_kind"] == "computed") & long["paper_system"].notna()]
        has_paper = computed[computed["paper_value"].notna()]
        assert (has_paper["source"] == "computed").all(), name
        exact = has_paper[has_paper["row_kind"] != "average"]
        assert exact["diff"].abs().max() < 1e-9, name
        for rec in has_paper[has_paper["row_kind"] == "average"].to_dict("records"):
            misprinted = (parsed.paper_table, rec["paper_system"], rec["block"], rec["row"])
            if misprinted not in known:
                assert abs(rec["diff"]) <= 0.1 + 1e-9, (name, misprinted)
        quoted = long[long["column_kind"] == "quoted"]
        # Tables 6-8 have computed columns only; elsewhere every quoted cell is the paper's.
        has_quoted = any(not col.computed for col in parsed.columns)
        assert set(quoted["source"]) == ({"paper"} if has_quoted else set()), name


def test_make_table_script_writes_labelled_csv(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.parquet"
    ours_metrics().to_parquet(metrics)
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump(PAPER), encoding="utf-8")
    out = {ext: tmp_path / f"toy.{ext}" for ext in ("csv", "parquet", "md")}
    argv = ["make_table.py", "--name", "toy", "--spec", json.dumps(SPEC), "--paper", str(paper)]
    argv += ["--label", "demo", "--metrics", str(metrics)]
    argv += [f"--{ext}={path}" for ext, path in out.items()]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "scripts" / "make_table.py"), run_name="__main__")
    text = out["csv"].read_text(encoding="utf-8")
    assert text.startswith("# [demo] Toy table\n")
    back = pd.read_csv(out["csv"], comment="#").set_index("dataset")
    assert back.loc["nq", "Ours"] == 45.0 and back.loc[BEST_ON, "Ours"] == 3
    assert out["md"].read_text(encoding="utf-8").startswith("**[demo] Toy table**")
