"""Paper-shaped tables: cell provenance, averages, "Best on", and the quoted numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from contriever_repro.errors import InputError
from contriever_repro.io import write_table
from contriever_repro.tables import (
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
    write_table_outputs(built.long, built.wide, built.markdown, csv, parquet, md)
    back = pd.read_parquet(parquet)
    assert len(back) == len(built.long) and set(back["source"]) == {"computed", "paper"}
    assert pd.read_csv(csv).columns[0] == "dataset"
    assert md.read_text(encoding="utf-8") == built.markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md", "t.parquet"]


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


def test_paper_results_shape(paper):
    datasets = paper["datasets"]
    assert len(datasets) == 15
    for key, system in paper["systems"].items():
        assert system["label"] and system["source"]
        tables = [t for t, meta in paper["tables"].items() if key in meta["systems"]]
        assert tables, key
        assert sorted(system["averages"]) == sorted(tables)
        assert sorted(system["best_on"]) == sorted(tables)
        for table in tables:
            for metric in paper["tables"][table]["metrics"]:
                assert list(system[metric]) == datasets, (key, metric)
                assert all(v is None or 0 <= v <= 100 for v in system[metric].values())
                reported = system["averages"][table][metric]
                assert sorted(reported) == sorted(paper["tables"][table]["averages"]), key
                assert metric in system["best_on"][table]


def test_paper_averages_match_per_dataset_values(paper):
    """Re-derive every reported average: catches transcription errors."""
    known = {
        (k["table"], k["system"], k["metric"], k["average"]) for k in paper["known_inconsistencies"]
    }
    off, checked = set(), 0
    for table, meta in paper["tables"].items():
        for key in meta["systems"]:
            system = paper["systems"][key]
            for metric in meta["metrics"]:
                for avg_name, exclude in meta["averages"].items():
                    reported = system["averages"][table][metric][avg_name]
                    values = [system[metric][d] for d in paper["datasets"] if d not in exclude]
                    if reported is None:
                        assert None in values, (table, key, metric, avg_name)
                        continue
                    checked += 1
                    mean = sum(values) / len(values)
                    if abs(mean - reported) > 0.1 + 1e-9:
                        off.add((table, key, metric, avg_name))
    assert checked == 44
    assert off == known


def test_paper_best_on_matches_per_dataset_values(paper):
    """Re-count every "Best on" row with the documented convention."""
    for table, meta in paper["tables"].items():
        counted = [d for d in paper["datasets"] if d not in meta["best_on_exclude"]]
        for metric in meta["metrics"]:
            systems = meta["systems"]
            counts = best_on_counts(
                {s: [paper["systems"][s][metric][d] for d in counted] for s in systems},
                {s: s for s in systems},
            )
            reported = {s: paper["systems"][s]["best_on"][table][metric] for s in systems}
            assert counts == reported, (table, metric)


def test_paper_table_specs_reproduce_the_paper_from_paper_valued_metrics(paper):
    """Computed columns fed the paper's own numbers land on the paper's averages and counts."""
    config = yaml.safe_load(TABLES_YAML.read_text(encoding="utf-8"))
    values = {}
    for model in ("bm25", "contriever", "contriever-msmarco"):
        for metric in ("ndcg@10", "recall@100"):
            for ds, v in paper["systems"][model][metric].items():
                used = "recall_cap@100" if (ds, metric) == ("trec-covid", "recall@100") else metric
                values[(model, ds, used)] = v / 100
    metrics = metrics_frame(values)
    for name, spec in config["tables"].items():
        long = build_table(name, spec, metrics, paper).long
        computed = long[long["column_kind"] == "computed"]
        assert (computed["source"] == "computed").all(), name
        assert computed["diff"].abs().max() <= 0.1 + 1e-9, name
        exact = computed[computed["row_kind"] != "average"]
        assert exact["diff"].abs().max() < 1e-9, name
        quoted = long[long["column_kind"] == "quoted"]
        assert set(quoted["source"]) == {"paper"}, name
    assert set(config["figures"]) == {"figure1"}
