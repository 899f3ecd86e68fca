"""`make clean-demo` removes what the demo wrote and nothing a paper run wrote."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text(encoding="utf-8"))


def test_demo_writes_to_folders_of_its_own():
    demo, paper = config("demo.yaml"), config("config.yaml")
    for key in ("work_dir", "results_dir"):
        ours, theirs = Path(demo[key]), Path(paper[key])
        # results/demo may sit inside results/: a paper run writes only results/tableN.* and
        # results/figureN.* there (plan.REPORT_KEYS), never a folder named demo.
        assert ours != theirs and ours not in theirs.parents, key


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_clean_demo_keeps_the_paper_results(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    demo, paper = config("demo.yaml"), config("config.yaml")
    kept = [
        Path(paper["results_dir"]) / "table2.csv",
        Path(paper["results_dir"]) / "figure1.png",
        Path(paper["work_dir"]) / "runs" / "x.parquet",
    ]
    removed = [
        Path(demo["results_dir"]) / "table2.csv",
        Path(demo["results_dir"]) / "figure2.png",
        Path(demo["work_dir"]) / "runs" / "x.parquet",
    ]
    for rel in kept + removed:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    proc = subprocess.run(
        ["make", "clean-demo"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert all((tmp_path / rel).is_file() for rel in kept)
    assert not (tmp_path / demo["results_dir"]).exists()
    assert not (tmp_path / demo["work_dir"]).exists()
