"""Progress lines for long jobs: count, rate and ETA, written to the job's log.

tqdm's carriage-return bars turn into noise in SLURM/Snakemake log files, so long
loops report through `logging` at a bounded frequency instead.
"""

from __future__ import annotations

import logging
import time


def fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class Progress:
    """Log `done/total`, items per second and ETA at most every `interval` seconds."""

    def __init__(
        self,
        total: int,
        what: str,
        logger: logging.Logger | None = None,
        interval: float = 10.0,
        unit: str = "items",
    ):
        self.total = total
        self.what = what
        self.unit = unit
        self.logger = logger or logging.getLogger("contriever_repro")
        self.interval = interval
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.interval or self.done >= self.total:
            self._last = now
            self.logger.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = fmt_seconds(remaining) if remaining != float("inf") else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.1f}%), "
            f"{rate:.1f} {self.unit}/s, elapsed {fmt_seconds(elapsed)}, ETA {eta}"
        )
