"""Figure 1-style bar charts and Figure 2-style queue sweeps: valid, repeatable PNGs and the
plotted numbers, from metrics or from a built table."""

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
from contriever_repro.figures import (
    figure1,
    figure_cells,
    figure_kind,
    parse_figure_spec,
    parse_queue_sweep_spec,
    queue_sweep_figure,
    queue_sweep_points,
)
from contriever_repro.tables import build_long, load_paper_results

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics_frame(model: str, values: dict[str, float], metric: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": model,
                "dataset": ds,
                "split": "test",
                "metric": metric,
                "value": v,
                "n_queries": 5,
                "run": f"runs/{model}/{ds}.parquet",
                "config_hash": "cafe01",
                "code_version": "v0-test",
            }
            for ds, v in values.items()
        ]
    )


def assert_png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    return data


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_paper_results(ROOT / "config" / "paper_results.yaml")


@pytest.fixture(scope="module")
def figure_spec() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    return config["figures"]["figure1"]


def contriever_metrics(paper: dict, skip: str | None = None) -> pd.DataFrame:
    recall = paper["systems"]["contriever"]["recall@100"]
    frames = [
        metrics_frame(
            "contriever",
            {d: v / 100 for d, v in recall.items() if d not in ("trec-covid", skip)},
            "recall@100",
        ),
        metrics_frame("contriever", {"trec-covid": recall["trec-covid"] / 100}, "recall_cap@100"),
    ]
    return pd.concat(frames, ignore_index=True)


def test_paper_figure1_from_metrics_is_a_repeatable_png(tmp_path, paper, figure_spec):
    metrics = contriever_metrics(paper, skip="nq")  # one missing bar is drawn as "n/a"
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    figure1(metrics, figure_spec, first, paper=paper)
    figure1(metrics, figure_spec, second, paper=paper)
    assert assert_png(first) == assert_png(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp files


def test_figure_cells_use_the_capped_recall_and_quote_the_paper(paper, figure_spec):
    cells = figure_cells("figure1", figure_spec, contriever_metrics(paper), paper)
    ours = cells[(cells["column"] == "Contriever") & (cells["row"] == "trec-covid")].iloc[0]
    assert ours["metric"] == "recall_cap@100" and ours["value"] == pytest.approx(17.2)
    simcse = cells[(cells["column"] == "SimCSE") & (cells["row"] == "nq")].iloc[0]
    assert (simcse["source"], simcse["value"]) == ("paper", 42.9)


def test_figure_from_a_built_table_long_form(tmp_path, paper, figure_spec):
    table_spec = {
        "blocks": [{"metric": "recall@100", "metric_overrides": figure_spec["metric_overrides"]}],
        "datasets": figure_spec["datasets"],
        "columns": figure_spec["columns"],
        "averages": [{"name": "Avg.", "exclude": []}],
    }
    long = build_long("table11", table_spec, contriever_metrics(paper), paper)
    out = tmp_path / "from_long.png"
    figure1(long, figure_spec, out, label="test")
    assert_png(out)


def test_demo_figure_with_synthetic_datasets_and_no_paper(tmp_path):
    spec = {
        "caption": "Demo Recall@100",
        "metric": "recall@100",
        "datasets": ["demo-a", "demo-b", "demo-c"],
        "columns": [
            {"name": "BM25", "model": "bm25"},
            {"name": "Tiny BERT", "model": "tiny-bert"},
        ],
    }
    values = {"demo-a": 0.8, "demo-b": 0.55, "demo-c": 0.9}
    metrics = pd.concat(
        [
            metrics_frame("bm25", values, "recall@100"),
            metrics_frame("tiny-bert", values, "recall@100"),
        ]
    )
    out = tmp_path / "demo.png"
    figure1(metrics, spec, out, label="demo")
    assert_png(out)


def test_bad_figure_specs_name_the_key(tmp_path, paper, figure_spec):
    with pytest.raises(InputError, match=r"figures\.figure1\.columns\[0\] \('BM25'\)\.paper"):
        bad = {**figure_spec, "columns": [{"name": "BM25", "paper": "bm26"}]}
        figure1(contriever_metrics(paper), bad, tmp_path / "x.png", paper=paper)
    with pytest.raises(InputError, match=r"figures\.figure1\.metric: required"):
        figure1(contriever_metrics(paper), {"datasets": ["nq"]}, tmp_path / "x.png")
    with pytest.raises(InputError, match="unknown key"):
        figure1(contriever_metrics(paper), {**figure_spec, "blocks": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_figure1_csv_has_the_drawn_cells(tmp_path, paper, figure_spec):
    out_csv = tmp_path / "figure1.csv"
    figure1(
        contriever_metrics(paper, skip="nq"),
        {**figure_spec, "kind": "bars"},
        tmp_path / "figure1.png",
        paper=paper,
        out_csv=out_csv,
    )
    cells = pd.read_csv(out_csv)
    ours = cells[cells["column"] == "Contriever"].set_index("dataset")
    assert ours.loc["trec-covid", "metric"] == "recall_cap@100"
    assert ours.loc["trec-covid", "value"] == pytest.approx(17.2)
    assert ours.loc["nq", "source"] == "missing" and math.isnan(ours.loc["nq", "value"])
    assert len(cells) == len(figure_spec["datasets"]) * len(figure_spec["columns"])


def test_every_configured_figure_parses(paper):
    """The workflow's figure specs are valid for their kind (bars against the paper)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    for name, spec in config["figures"].items():
        if figure_kind(name, spec) == "queue_sweep":
            parse_queue_sweep_spec(name, spec)
        else:
            parse_figure_spec(name, spec, paper)


# --------------------------------------------------------------------------- queue sweep

SWEEP_DATASETS = ["nfcorpus", "nq", "fiqa"]
SWEEP = {
    "kind": "queue_sweep",
    "caption": "Impact of the number of negatives (paper Figure 2)",
    "metric": "ndcg@10",
    "metric_label": "nDCG@10",
    "datasets": SWEEP_DATASETS,
    "x_label": "Queue size (negatives)",
    "series": [
        {
            "name": "MoCo, no fine-tuning",
            # Out of order on purpose: lines are drawn (and the CSV written) by x.
            "points": [
                {"x": 8192, "model": "q8k"},
                {"x": 2048, "model": "q2k"},
                {"x": 32768, "model": "q32k"},
                {"x": 131072, "model": "q131k"},
            ],
        },
        {
            "name": "MoCo + MS MARCO fine-tuning",
            "points": [{"x": 2048, "model": "q2k-ft"}, {"x": 131072, "model": "q131k-ft"}],
        },
    ],
}
# nDCG@10 fractions per model and data set; q32k has no fiqa, so its point is missing.
SWEEP_VALUES = {
    "q2k": [0.25, 0.20, 0.15],
    "q8k": [0.27, 0.22, 0.17],
    "q32k": [0.30, 0.26],
    "q131k": [0.31, 0.28, 0.19],
    "q2k-ft": [0.33, 0.45, 0.28],
    "q131k-ft": [0.34, 0.47, 0.29],
    "unused": [0.99, 0.99, 0.99],  # not in the spec: ignored
}


def sweep_metrics() -> pd.DataFrame:
    frames = [
        metrics_frame(model, dict(zip(SWEEP_DATASETS, values, strict=False)), "ndcg@10")
        for model, values in SWEEP_VALUES.items()
    ]
    other_metric = metrics_frame("q2k", {"nfcorpus": 0.9}, "recall@100")
    return pd.concat([*frames, other_metric], ignore_index=True)


def expected_point(model: str) -> float:
    """The mean a table's "Avg." row gives: of the unrounded x100 values, in data-set order."""
    values = [100.0 * v for v in SWEEP_VALUES[model]]
    return sum(values) / len(values) if len(values) == len(SWEEP_DATASETS) else math.nan


def test_queue_sweep_points_are_table_averages():
    points = queue_sweep_points("figure2", SWEEP, sweep_metrics())
    assert list(points.columns) == ["series", "x", "model", "value", "n_datasets"]
    assert list(points["model"]) == ["q2k", "q8k", "q32k", "q131k", "q2k-ft", "q131k-ft"]
    assert list(points["x"]) == [2048, 8192, 32768, 131072, 2048, 131072]
    assert list(points["n_datasets"]) == [3, 3, 2, 3, 3, 3]
    for rec in points.to_dict("records"):
        expected = expected_point(rec["model"])
        if math.isnan(expected):
            assert math.isnan(rec["value"])  # never a mean over fewer data sets
        else:
            assert rec["value"] == expected
    assert points["value"].iloc[0] == pytest.approx(20.0)
    assert points["value"].iloc[5] == pytest.approx(36.666666666666664)


def test_queue_sweep_figure_writes_png_and_csv_repeatably(tmp_path):
    metrics = sweep_metrics()
    png, csv = tmp_path / "figure2.png", tmp_path / "figure2.csv"
    returned = queue_sweep_figure(metrics, SWEEP, png, out_csv=csv, label="test")
    first_png, first_csv = assert_png(png), csv.read_bytes()
    queue_sweep_figure(metrics, SWEEP, png, out_csv=csv, label="test")
    assert png.read_bytes() == first_png and csv.read_bytes() == first_csv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure2.csv", "figure2.png"]

    lines = first_csv.decode().splitlines()
    assert lines[0] == "series,x,model,value,n_datasets"
    assert lines[3] == '"MoCo, no fine-tuning",32768,q32k,,2'  # missing: empty, not a mean
    back = pd.read_csv(csv)
    assert back["value"].equals(returned["value"])  # unrounded values survive the CSV
    for rec in back.to_dict("records"):
        expected = expected_point(rec["model"])
        assert rec["value"] == expected or (math.isnan(expected) and math.isnan(rec["value"]))

    # Without a CSV, and with no metrics at all (every point missing), it still draws.
    empty = tmp_path / "empty.png"
    queue_sweep_figure(metrics.iloc[:0], SWEEP, empty)
    assert_png(empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.png",
        "figure2.csv",
        "figure2.png",
    ]


def test_make_figure_script_dispatches_on_kind(tmp_path, monkeypatch):
    metrics_file = tmp_path / "metrics.parquet"
    sweep_metrics().to_parquet(metrics_file)
    out, csv = tmp_path / "f2.png", tmp_path / "f2.csv"
    argv = ["make_figure.py", "--name", "figure2", "--spec", json.dumps(SWEEP)]
    argv += ["--paper", str(ROOT / "config" / "paper_results.yaml")]
    argv += ["--metrics", str(metrics_file), "--out", str(out), "--csv", str(csv)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "scripts" / "make_figure.py"), run_name="__main__")
    assert_png(out)
    assert list(pd.read_csv(csv)["model"])[:2] == ["q2k", "q8k"]


def with_change(path: str, value) -> dict:
    """SWEEP with one key replaced; `path` is dotted, list indices as numbers."""
    spec = json.loads(json.dumps(SWEEP))
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = spec
    for key in parents:
        target = target[key]
    target[last] = value
    return spec


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("colour", "red", r"figures\.figure2: unknown key\(s\) \['colour'\]"),
        ("kind", "lines", r"figures\.figure2\.kind: unknown kind 'lines'"),
        ("metric", "ndcg10", r"figures\.figure2\.metric: required"),
        ("datasets", [], r"figures\.figure2\.datasets: required"),
        ("datasets", ["nq", "nq"], r"figures\.figure2\.datasets: duplicated"),
        ("series", [], r"figures\.figure2\.series: required"),
        ("series.1.points", [], r"figures\.figure2\.series\[1\]\.points: required"),
        ("series.1.name", "MoCo, no fine-tuning", r"series\[1\]\.name: duplicated"),
        ("series.0.style", "dashed", r"figures\.figure2\.series\[0\]: unknown key"),
        ("series.1.points.0.x", 0, r"figures\.figure2\.series\[1\]\.points\[0\]\.x: expected"),
        ("series.1.points.0.x", -8, r"series\[1\]\.points\[0\]\.x: expected a positive"),
        ("series.1.points.0.x", True, r"series\[1\]\.points\[0\]\.x: expected a positive"),
        ("series.1.points.0.x", "2k", r"series\[1\]\.points\[0\]\.x: expected a positive"),
        ("series.1.points.1.x", 2048, r"series\[1\]\.points\[1\]\.x: duplicate x 2048"),
        ("series.1.points.0.model", None, r"figures\.figure2\.series\[1\]\.points\[0\]\.model"),
        ("series.1.points.0.queue", 4, r"series\[1\]\.points\[0\]: unknown key"),
    ],
)
def test_bad_queue_sweep_specs_name_the_key(tmp_path, path, value, needle):
    with pytest.raises(InputError, match=needle):
        queue_sweep_figure(sweep_metrics(), with_change(path, value), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_figure_kinds_do_not_mix(paper, figure_spec):
    with pytest.raises(InputError, match=r"figures\.figure1\.kind: 'queue_sweep' is not a bar"):
        parse_figure_spec("figure1", {**figure_spec, "kind": "queue_sweep"}, paper)
    with pytest.raises(InputError, match=r"figures\.figure1: unknown key\(s\) \['columns'"):
        parse_queue_sweep_spec("figure1", {**figure_spec, "kind": "queue_sweep"})
    with pytest.raises(InputError, match=r"figures\.figure2\.kind: expected 'queue_sweep'"):
        parse_queue_sweep_spec("figure2", {**SWEEP, "kind": "bars"})
    assert figure_kind("figure1", figure_spec) == "bars"
