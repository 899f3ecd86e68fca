"""What every thin script needs: logging to the job log and one clean exit on bad input."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from .errors import DISK_FULL_EXIT_CODE, DiskFullError, InputError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main; bad input becomes one readable line and exit status 2, a full
    disk one line and exit status 74 (DISK_FULL_EXIT_CODE)."""
    setup_logging()
    try:
        main()
    except InputError as err:
        _fail(err, 2)
    except DiskFullError as err:
        _fail(err, DISK_FULL_EXIT_CODE)


def _fail(err: Exception, status: int) -> None:
    logging.getLogger("contriever_repro").error("%s", err)
    print(f"error: {err}", file=sys.stderr)
    sys.exit(status)


def set_threads(n: int | None) -> None:
    """Respect the cores Snakemake gave the job (torch and FAISS default to all cores).

    torch is not imported for this: a search or BM25 job that never needs it would pay
    about a second per job to start it. OMP_NUM_THREADS covers a torch (or other
    OpenMP library) that the job loads later; one already loaded is set directly."""
    if not n:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def add_attention_args(ap) -> None:
    """`--sdpa-backends`: the attention kernels a script that runs an encoder may use
    (models/attention.py; config `attention.sdpa_backends`)."""
    from .models.attention import DEFAULT_SDPA_BACKENDS

    ap.add_argument(
        "--sdpa-backends",
        default=",".join(DEFAULT_SDPA_BACKENDS),
        help="comma-separated SDPA backends to enable (flash, efficient, cudnn, math)",
    )


def apply_attention(args) -> None:
    """Enable the SDPA backends `--sdpa-backends` names, before any model runs."""
    from .models.attention import set_sdpa_backends

    set_sdpa_backends(args.sdpa_backends, "--sdpa-backends")


def add_training_args(ap) -> None:
    """The arguments both training scripts (pre-training, fine-tuning) take besides
    their data: run folder, export, resume, Snakemake's attempt, time limit, device."""
    ap.add_argument("--run-dir", required=True, help="checkpoints and metrics (kept)")
    ap.add_argument("--export", default=None, help="HF folder to write when training ends")
    ap.add_argument("--resume", choices=("auto", "require", "never"), default="auto")
    ap.add_argument(
        "--attempt",
        type=int,
        default=None,
        help="Snakemake's attempt number: attempts after the first do not repeat an "
        "error a retry cannot fix (recorded in the run folder)",
    )
    ap.add_argument(
        "--time-limit-min",
        type=float,
        default=None,
        help="stop with a checkpoint this many minutes after start (the job's runtime)",
    )
    ap.add_argument("--stop-margin-min", type=float, default=10.0)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if visible)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--summary", default=None, help="JSON summary to write at the end")
    add_attention_args(ap)


def training_deadline(args, now: float) -> float | None:
    """When a training job must stop with a checkpoint: its time limit less the margin
    for the final checkpoint; a job too short for the margin stops at half its time, so
    every restart makes progress."""
    if not args.time_limit_min:
        return None
    limit, margin = args.time_limit_min, args.stop_margin_min
    return now + 60 * (limit - margin if limit > 2 * margin else limit / 2)


def mark_stopped() -> None:
    """Tell the multi-node launcher that this trainer stopped with a checkpoint
    (training/launch.py, STOPPED_FILE_ENV). Best effort: the stop itself is what the exit
    status says, so a launcher folder that is gone is only logged."""
    from .training.launch import STOPPED_FILE_ENV

    path = os.environ.get(STOPPED_FILE_ENV)
    if path:
        try:
            with open(path, "a"):
                pass
        except OSError as err:
            logging.getLogger("contriever_repro").warning("cannot mark the stop: %s", err)


def run_training(
    train, summary_path: str | None, stop_exceptions: tuple, stop_code: int, finish
) -> None:
    """The end of a training script: a pre-emption exits with `stop_code` (75, a retry
    resumes), the process group is left in every case, the summary written if asked."""
    import json

    try:
        summary = train()
    except stop_exceptions as stop:
        logging.getLogger("contriever_repro").warning("%s", stop)
        mark_stopped()
        finish()
        sys.exit(stop_code)
    finish()
    if summary_path:
        from .io import write_text

        write_text(json.dumps(summary, indent=1, default=str) + "\n", summary_path)
