"""bench/job_times.py: per-rule job time from Snakemake's metadata, on hand-made records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from workflow_utils import ROOT


@pytest.fixture(scope="module")
def job_times():
    """The script as a module, loaded from its file (it imports nothing from bench/)."""
    spec = importlib.util.spec_from_file_location("job_times", ROOT / "bench" / "job_times.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(folder: Path, name: str, rule: str, job_hash: int, start: float, end, **kw):
    record = {"rule": rule, "job_hash": job_hash, "starttime": start, "endtime": end} | kw
    (folder / name).write_text(json.dumps(record))


def test_each_job_counts_once_with_its_earliest_start(tmp_path, job_times):
    meta = tmp_path / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    # one encode job, three outputs recorded microseconds apart, same end
    for i, name in enumerate(("q.npy", "q.ids", "q.json")):
        _record(meta, name, "encode", 7, 100.0 + i * 1e-4, 106.0)
    _record(meta, "c.npy", "encode", 8, 103.0, 107.0)  # overlaps the first: 2 at once
    _record(meta, "run", "search", 9, 107.0, 108.0)
    _record(meta, "half", "search", 10, 108.0, None, incomplete=True)  # interrupted
    summary = job_times.summarise(job_times.read_jobs(tmp_path))
    assert summary["jobs"] == 3
    assert summary["wall_s"] == pytest.approx(8.0)
    assert summary["job_s"] == pytest.approx(6.0 + 4.0 + 1.0)
    assert summary["concurrency"] == pytest.approx(11.0 / 8.0)
    encode, search = summary["rules"]
    assert (encode["rule"], encode["jobs"], encode["max_s"]) == ("encode", 2, pytest.approx(6.0))
    assert encode["mean_s"] == pytest.approx(5.0)
    assert (search["rule"], search["jobs"], search["job_s"]) == ("search", 1, pytest.approx(1.0))
    table = job_times.markdown(summary, top=1)
    assert table.startswith("3 jobs, wall 8 s, 11 job-seconds (mean concurrency 1.38)")
    assert "| encode | 2 | 10 | 91% | 5.0 | 6.0 |" in table and "| search |" not in table


def test_a_folder_without_metadata_or_a_bad_record_is_named(tmp_path, job_times):
    with pytest.raises(SystemExit, match="no Snakemake metadata"):
        job_times.read_jobs(tmp_path)
    meta = tmp_path / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    (meta / "broken").write_text("{not json")
    with pytest.raises(SystemExit, match="broken: not a Snakemake metadata record"):
        job_times.read_jobs(tmp_path)
    (meta / "broken").unlink()
    with pytest.raises(SystemExit, match="no finished jobs"):
        job_times.summarise(job_times.read_jobs(tmp_path))
