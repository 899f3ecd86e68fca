"""Figure 1-style bar charts: valid, repeatable PNGs from metrics or from a built table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from contriever_repro.errors import InputError
from contriever_repro.figures import figure1, figure_cells
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
