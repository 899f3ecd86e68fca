"""Contrastive pre-training of one experiment (rule pretrain; launched by torchrun).

Exit status 75 means the run stopped early on SIGUSR1/SIGTERM or its time limit after
writing a checkpoint: running the same command again (Snakemake's retry, a SLURM
requeue) continues it exactly. Exit status 2 is bad input (configuration, data, a run
folder in use), which no retry fixes: later attempts stop at once (training.loop.pretrain).
"""

import argparse
import json
import logging
import sys
import time

from contriever_repro.cli import run_main, set_threads
from contriever_repro.training.config import PretrainConfig
from contriever_repro.training.loop import PREEMPTED_EXIT_CODE, Preempted, flush_denormals, pretrain

log = logging.getLogger("pretrain")


def source_pair(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, folder


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True, help="experiment name (config.pretraining key)")
    ap.add_argument("--experiment", required=True, help="config.pretraining entry as JSON")
    ap.add_argument("--init", required=True, help="HF model folder or hub id to start from")
    ap.add_argument("--source", type=source_pair, action="append", default=[])
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
    args = ap.parse_args()

    cfg = PretrainConfig.from_dict(args.name, json.loads(args.experiment))
    flush_denormals(cfg)  # before any torch op starts the thread pool
    set_threads(args.threads)
    deadline = None
    if args.time_limit_min:
        # Leave the margin for the final checkpoint; a job too short for the margin
        # still stops at half its time, so every restart makes progress.
        limit, margin = args.time_limit_min, args.stop_margin_min
        deadline = time.time() + 60 * (limit - margin if limit > 2 * margin else limit / 2)
    try:
        summary = pretrain(
            cfg,
            args.init,
            dict(args.source),
            args.run_dir,
            export_dir=args.export,
            resume=args.resume,
            deadline=deadline,
            device=args.device,
            attempt=args.attempt,
        )
    except Preempted as stop:
        log.warning("%s", stop)
        sys.exit(PREEMPTED_EXIT_CODE)
    if args.summary:
        from contriever_repro.io import write_text

        write_text(json.dumps(summary, indent=1, default=str) + "\n", args.summary)


if __name__ == "__main__":
    run_main(main)
