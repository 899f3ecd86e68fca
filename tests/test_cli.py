"""contriever_repro.cli: the thread count a job was given reaches torch, whenever it loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _threads_seen_by_torch(code: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT / "lib")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch already uses one thread here")
@pytest.mark.parametrize("torch_first", [False, True])
def test_set_threads_reaches_torch_loaded_before_or_after(torch_first):
    """A search job sets its threads without starting torch; a torch loaded later (or
    earlier) still runs on the job's one core, not on every core of the node."""
    code = f"""
        import sys
        if {torch_first}:
            import torch
        from contriever_repro.cli import set_threads
        set_threads(1)
        assert {torch_first} == ("torch" in sys.modules)
        import torch
        print(torch.get_num_threads())
    """
    assert _threads_seen_by_torch(code) == 1
    assert _threads_seen_by_torch("import torch; print(torch.get_num_threads())") > 1
