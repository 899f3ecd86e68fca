"""Where a finished Snakemake run spent its time, per rule, from Snakemake's own records.

Snakemake keeps one record per output file under `<workdir>/.snakemake/metadata` (rule,
job hash, start and end time). Each job is counted once, however many outputs it wrote.
The demo keeps both cores busy, so its wall time is about its job-seconds / 2: this
table says which jobs to cut when it grows (docs/testing.md, "Where the test time goes").
Give it a folder that ran once from scratch: the records of outputs an earlier run left
there, and the last one did not redo, are counted too and stretch the wall time.

    python bench/job_times.py WORKDIR [--top 15]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple


class Job(NamedTuple):
    rule: str
    start: float
    end: float


def read_jobs(workdir: Path) -> list[Job]:
    """The run's jobs: the outputs of one job share its hash and end time (their start
    times differ by the microseconds between records; the earliest is the job's)."""
    folder = Path(workdir) / ".snakemake" / "metadata"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no Snakemake metadata (run the workflow in {workdir})")
    jobs: dict[tuple, Job] = {}
    for path in sorted(folder.iterdir()):
        try:
            record = json.loads(path.read_text())
            if record.get("incomplete"):  # interrupted: no end time to count
                continue
            key = (record["rule"], record["job_hash"], record["endtime"])
            job = Job(record["rule"], float(record["starttime"]), float(record["endtime"]))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SystemExit(f"{path}: not a Snakemake metadata record ({err})") from None
        if key not in jobs or job.start < jobs[key].start:
            jobs[key] = job
    return list(jobs.values())


def summarise(jobs: list[Job]) -> dict:
    """Per rule: jobs, job-seconds, mean and max; and the run's wall time, job-seconds and
    mean concurrency (job-seconds / wall)."""
    if not jobs:
        raise SystemExit("no finished jobs in the metadata")
    rules: dict[str, list[float]] = {}
    for job in jobs:
        rules.setdefault(job.rule, []).append(job.end - job.start)
    wall = max(j.end for j in jobs) - min(j.start for j in jobs)
    busy = sum(sum(times) for times in rules.values())
    per_rule = [
        {
            "rule": rule,
            "jobs": len(times),
            "job_s": sum(times),
            "mean_s": sum(times) / len(times),
            "max_s": max(times),
        }
        for rule, times in rules.items()
    ]
    per_rule.sort(key=lambda row: (-row["job_s"], row["rule"]))
    return {
        "jobs": len(jobs),
        "wall_s": wall,
        "job_s": busy,
        "concurrency": busy / wall if wall > 0 else float("nan"),
        "rules": per_rule,
    }


def markdown(summary: dict, top: int) -> str:
    lines = [
        f"{summary['jobs']} jobs, wall {summary['wall_s']:.0f} s, "
        f"{summary['job_s']:.0f} job-seconds (mean concurrency {summary['concurrency']:.2f})",
        "",
        "| rule | jobs | job-s | share | mean s | max s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary["rules"][:top]:
        share = row["job_s"] / summary["job_s"] if summary["job_s"] else 0.0
        lines.append(
            f"| {row['rule']} | {row['jobs']} | {row['job_s']:.0f} | {share:.0%} "
            f"| {row['mean_s']:.1f} | {row['max_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path, help="the folder Snakemake ran in")
    ap.add_argument("--top", type=int, default=15, help="rules listed (by job-seconds)")
    args = ap.parse_args(argv)
    print(markdown(summarise(read_jobs(args.workdir)), args.top))


if __name__ == "__main__":
    main(sys.argv[1:])
