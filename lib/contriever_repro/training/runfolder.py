"""The pre-training run folder `{work}/pretrain/<name>/`: who may write it, what it was
made with, how its attempts ended, and where their logs go. No torch here: the Snakefile
reads the same records at start-up, on the submit host.

Files (besides checkpoints/ and metrics.jsonl, see loop.py and checkpoint.py)::

    .lock             flock'ed by the one process allowed to write the folder (rank 0);
                      it holds the holder's pid, host and SLURM job for the message a
                      second writer gets. The kernel drops the lock when the holder dies
                      (even by kill -9), so it is never stale.
    experiment.json   the training configuration the checkpoints were made with
    failed.json       an error a retry cannot fix (bad configuration or data), written by
                      the attempt that hit it; later attempts of the same Snakemake run
                      with the same configuration stop at once instead of repeating it
    logs/train.log    every attempt's log, appended (Snakemake deletes a job's `log:` file
                      before each attempt); ranks > 0 add warnings to train.rank-<r>.log
    export/           the finished model, written once; the rule's output is a copy
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_path

LOCK_FILE = ".lock"
EXPERIMENT_FILE = "experiment.json"
FAILED_FILE = "failed.json"
LOG_DIR = "logs"
EXPORT_DIR = "export"


class RunFolderBusy(InputError):
    """Another live process holds the run folder's lock."""


class NotRetried(InputError):
    """An earlier attempt failed with an error that a retry cannot fix."""


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": _now(),
    }


# --------------------------------------------------------------------------- the lock


class RunLock:
    """Exclusive right to write a run folder, for as long as this object holds it.

    `flock` on `<run_dir>/.lock`: released by `release()`, by process exit, or by the
    kernel when the holder is killed; works across hosts on file systems with
    cluster-wide flock (Lustre mounted with `flock`, GPFS, NFSv4).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fh = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                fh.close()
                raise
            fh.seek(0)
            text = fh.read()
            fh.close()
            raise RunFolderBusy(f"is being written by {_describe(text)}", self.run_dir) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(_holder()) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        who = json.loads(text)
    except ValueError:
        return "another process (its lock file names no holder)"
    job = f", SLURM job {who['slurm_job']}" if who.get("slurm_job") else ""
    return (
        f"another trainer: pid {who.get('pid')} on host {who.get('host')}{job}, "
        f"since {who.get('since')}. Two writers would corrupt its checkpoints: wait for "
        f"that process to end, or stop it (e.g. `kill {who.get('pid')}` on "
        f"{who.get('host')}) and run again"
    )


# --------------------------------------------------------------------------- records


def experiment_record(training: dict, init: str) -> dict:
    """What experiment.json holds: the training configuration and the initial model."""
    return json.loads(json.dumps({"init": str(init), **training}))


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "latest").exists()


def config_changes(run_dir: str | Path, record: dict) -> list[str]:
    """`key: old -> new` for every training setting that differs from the one the run
    folder's checkpoints were made with; [] for a folder without checkpoints. The initial
    model's path is not compared: the same model may have moved."""
    path = Path(run_dir) / EXPERIMENT_FILE
    if not has_checkpoint(run_dir) or not path.exists():
        return []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(f"not valid JSON ({err}); delete it with the run folder", path) from None
    keys = sorted(k for k in set(saved) | set(record) if k != "init")
    return [
        f"{k}: {saved.get(k)!r} -> {record.get(k)!r}" for k in keys if saved.get(k) != record.get(k)
    ]


def changed_config_message(
    name: str, run_dir: str | Path, changes: list[str], section: str = "pretraining"
) -> str:
    return (
        f"{section}.{name}: the configuration differs from the one the checkpoints in "
        f"{run_dir} were made with ({'; '.join(changes)}). Restore those values to continue "
        "that run, or move the run folder away (and the model exported from it) to start "
        "afresh"
    )


def write_experiment(run_dir: str | Path, record: dict) -> None:
    with atomic_path(Path(run_dir) / EXPERIMENT_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def check_not_failed_before(run_dir: str | Path, record: dict, attempt: int | None) -> None:
    """Attempt 1 (a new Snakemake run: its user may have fixed the cause) forgets earlier
    failures; a later attempt with the same configuration refuses to repeat one."""
    path = Path(run_dir) / FAILED_FILE
    if attempt is None or not path.exists():
        return
    if attempt <= 1:
        path.unlink()
        return
    failed = json.loads(path.read_text(encoding="utf-8"))
    if failed.get("experiment") == record:
        raise NotRetried(
            f"attempt {attempt} not run: attempt {failed.get('attempt')} failed with an "
            f"error a retry cannot fix: {failed.get('error')}",
            path,
        )


def record_failure(run_dir: str | Path, record: dict, attempt: int | None, error: str) -> None:
    body = {"attempt": attempt, "error": error, "experiment": record, "when": _now()}
    with atomic_path(Path(run_dir) / FAILED_FILE) as tmp:
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- logs


def attach_log(run_dir: str | Path, rank: int, attempt: int | None) -> logging.Handler:
    """Append this process's log records to the run folder's log, which no Snakemake
    attempt deletes (levels stay as the application set them); returns the handler
    (remove it with `detach_log`). Rank 0 starts each attempt with a header line."""
    folder = Path(run_dir) / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        path = folder / "train.log"
        who = _holder()
        job = f", SLURM job {who['slurm_job']}" if who["slurm_job"] else ""
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(
                f"==== {who['since']} attempt {attempt or '?'}: pid {who['pid']} on "
                f"{who['host']}{job} ====\n"
            )
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    else:
        path = folder / f"train.rank-{rank}.log"
        handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
        handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def detach_log(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
