"""Running the workflow from tests: subprocess + `python -m snakemake`, as DESIGN.md advises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 1200
) -> subprocess.CompletedProcess:
    """Run snakemake with the repository's Snakefile; targets must come before --config."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "lib"), full_env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def base_config(tmp: Path) -> dict:
    """Paths every config needs, absolute so the workflow can run in a temporary folder."""
    return {
        "work_dir": str(tmp / "work"),
        "results_dir": str(tmp / "results"),
        "mirror": None,
        "beir_catalog": str(ROOT / "config" / "beir_datasets.yaml"),
        "paper_results": str(ROOT / "config" / "paper_results.yaml"),
    }
