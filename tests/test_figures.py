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
from contriever_repro.reporting.figures import (
    figure1,
    figure_cells,
    figure_kind,
    parse_figure_spec,
    parse_queue_sweep_spec,
    queue_sweep_figure,
    queue_sweep_points,
    title_lines,
)
from contriever_repro.reporting.tables import build_long, load_paper_results

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
    cells = pd.read_csv(out_csv, comment="#")
    ours = cells[cells["column"] == "Contriever"].set_index("dataset")
    assert ours.loc["trec-covid", "metric"] == "recall_cap@100"
    assert ours.loc["trec-covid", "value"] == 17.2
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
    assert lines[0] == "# [test] Impact of the number of negatives (paper Figure 2)"
    assert lines[1].startswith("# value: mean over the data sets")
    assert lines[2] == "series,x,model,value,n_datasets"
    assert lines[5] == '"MoCo, no fine-tuning",32768,q32k,,2'  # missing: empty, not a mean
    assert lines[-1] == "MoCo + MS MARCO fine-tuning,131072,q131k-ft,36.7,3"  # 36.666...
    back = pd.read_csv(csv, comment="#")
    assert back["value"].equals(returned["value"].round(1))  # the paper's precision
    for rec in back.to_dict("records"):
        expected = expected_point(rec["model"])
        assert rec["value"] == round(expected, 1) or (
            math.isnan(expected) and math.isnan(rec["value"])
        )

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
    assert list(pd.read_csv(csv, comment="#")["model"])[:2] == ["q2k", "q8k"]


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


# --------------------------------------------------------------------------- layout


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every Figure saved while the test runs, to inspect its layout."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text(encoding="utf-8"))


def demo_metrics(spec: dict, metric: str) -> pd.DataFrame:
    """Values like 0.57 whose x100 is 56.99999999999999 in floating point."""
    models = [c["model"] for c in spec.get("columns", [])]
    models += [p["model"] for s in spec.get("series", []) for p in s["points"]]
    frames = [
        metrics_frame(m, {d: 0.57 - 0.01 * i for d in spec["datasets"]}, metric)
        for i, m in enumerate(models)
    ]
    return pd.concat(frames, ignore_index=True)


def assert_inside(fig) -> None:
    """Every piece of text (title, labels, ticks, legend) lies within the figure."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    box = fig.bbox
    # Matplotlib keeps the labels of ticks beyond the axis limits but does not draw them.
    undrawn = set()
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            for tick in axis.get_major_ticks():
                if not lo <= tick.get_loc() <= hi:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    texts = [
        t
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and id(t) not in undrawn
    ]
    assert texts
    for text in texts:
        ext = text.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1, text.get_text()
        assert ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, text.get_text()


def legend_of(fig):
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1
    return legends[0]


@pytest.mark.parametrize("which", ["demo", "paper"])
def test_figure1_legend_fits_and_the_bars_use_the_width(tmp_path, drawn, paper, which):
    if which == "demo":
        config = demo_config()
        spec, label, quoted = config["figures"]["figure1"], config["label"], None
        metrics = demo_metrics(spec, spec["metric"])
    else:
        spec, label, quoted = (
            yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))[
                "figures"
            ]["figure1"],
            "",
            paper,
        )
        metrics = contriever_metrics(paper)
    figure1(metrics, spec, tmp_path / "f.png", paper=quoted, label=label)
    (fig,) = drawn
    assert_inside(fig)
    legend = legend_of(fig)
    renderer = fig.canvas.get_renderer()
    assert fig.bbox.contains(*legend.get_window_extent(renderer).p0)
    assert fig.bbox.contains(*legend.get_window_extent(renderer).p1)
    # The axes take the figure's width (a clipped legend used to squeeze them to 2/3).
    (ax,) = fig.axes
    assert ax.get_position().width > 0.8


def test_figure1_legend_names_each_column_once(tmp_path, drawn, paper):
    config = demo_config()
    spec = config["figures"]["figure1"]
    figure1(demo_metrics(spec, spec["metric"]), spec, tmp_path / "f.png")
    labels = [t.get_text() for t in legend_of(drawn[0]).get_texts()]
    assert labels == [c["name"] for c in spec["columns"]]
    assert labels[0] == "BM25 (computed)"  # not "BM25 (computed) (computed here)"
    assert legend_of(drawn[0]).get_title().get_text() == "solid: computed here"

    paper_spec = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    paper_spec = paper_spec["figures"]["figure1"]
    figure1(contriever_metrics(paper), paper_spec, tmp_path / "p.png", paper=paper)
    legend = legend_of(drawn[1])
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == [*(c["name"] for c in paper_spec["columns"]), "paper value"]
    assert legend.get_title().get_text() == "solid: computed here; hatched: quoted from the paper"


def test_figure_csvs_round_to_the_papers_precision(tmp_path):
    config = demo_config()
    bars, sweep = config["figures"]["figure1"], config["figures"]["figure2"]
    csv1, csv2 = tmp_path / "f1.csv", tmp_path / "f2.csv"
    figure1(demo_metrics(bars, "recall@100"), bars, tmp_path / "f1.png", out_csv=csv1)
    queue_sweep_figure(demo_metrics(sweep, "ndcg@10"), sweep, tmp_path / "f2.png", out_csv=csv2)
    for csv in (csv1, csv2):
        text = csv.read_text(encoding="utf-8")
        assert "56.99999" not in text and "57.0" in text
        numbers = [
            v for line in text.splitlines() if not line.startswith("#") for v in line.split(",")
        ]
        decimals = [v.split(".")[1] for v in numbers if v.replace(".", "").isdigit() and "." in v]
        assert decimals and all(len(d) == 1 for d in decimals), decimals


def test_titles_break_at_phrase_boundaries():
    demo = "Demo of paper Figure 2: nDCG@10 averaged over the demo data sets vs MoCo queue size"
    assert title_lines(demo, 100) == [demo]
    assert title_lines(demo, 80) == [
        "Demo of paper Figure 2:",
        "nDCG@10 averaged over the demo data sets vs MoCo queue size",
    ]
    assert title_lines(demo, 50) == [
        "Demo of paper Figure 2:",
        "nDCG@10 averaged over the demo data sets",
        "vs MoCo queue size",
    ]
    assert title_lines("BM25 (paper Figure 1)", 16) == ["BM25", "(paper Figure 1)"]
    assert title_lines("one two three four", 9) == ["one two", "three", "four"]
    assert title_lines("a\nb", 80) == ["a", "b"]


@pytest.mark.parametrize("config_name", ["demo.yaml", "config.yaml"])
def test_figure2_title_keeps_phrases_and_fits(tmp_path, drawn, config_name):
    config = yaml.safe_load((ROOT / "config" / config_name).read_text(encoding="utf-8"))
    spec = config["figures"]["figure2"]
    label = config.get("label", "")
    queue_sweep_figure(demo_metrics(spec, spec["metric"]), spec, tmp_path / "f.png", label=label)
    (fig,) = drawn
    assert_inside(fig)
    lines = fig.axes[0].get_title().splitlines()
    # No line is a stray word cut from the end of a phrase ("size").
    assert all(len(line.split()) > 1 for line in lines), lines
    assert lines[0] == spec["caption"]
    assert lines[1:] == ([f"[{label}]"] if label else [])


def test_paper_figure2_draws_both_curves(tmp_path, drawn):
    """Figure 2's two curves: the queue sweep without and with MS MARCO fine-tuning, one
    line each, in the legend in config order, every point at its own model's mean."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    spec = config["figures"]["figure2"]
    names = [s["name"] for s in spec["series"]]
    assert names == ["MoCo, no fine-tuning", "MoCo, with MS MARCO fine-tuning"]
    metrics = demo_metrics(spec, spec["metric"])
    points = queue_sweep_figure(metrics, spec, tmp_path / "f2.png")
    (fig,) = drawn
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == names
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    queues = [2048, 4096, 8192, 16384, 32768, 65536, 131072]
    for line, series in zip(lines, spec["series"], strict=True):
        assert list(line.get_xdata()) == queues
        own = points[points["series"] == series["name"]]
        assert list(line.get_ydata()) == list(own["value"])
        assert not own["value"].isna().any()
    tuned = points[points["series"] == names[1]].set_index("x")["model"]
    assert tuned[131072] == "ablation-crop-delete-msmarco"
    assert tuned[2048] == "ablation-queue-2048-msmarco"
    # demo_metrics gives each model its own value: the two curves differ everywhere.
    untuned = points[points["series"] == names[0]]["value"].to_numpy()
    assert (untuned != points[points["series"] == names[1]]["value"].to_numpy()).all()
