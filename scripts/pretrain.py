"""Contrastive pre-training of one experiment (rule pretrain; launched by torchrun).

Exit status 75 means the run stopped early on SIGUSR1/SIGTERM or its time limit after
writing a checkpoint: running the same command again (Snakemake's retry, a SLURM
requeue) continues it exactly. Exit status 2 is bad input (configuration, data, a run
folder in use), which no retry fixes: later attempts stop at once (training.loop.pretrain).
"""

import argparse
import json
import logging
import time

from contriever_repro.cli import (
    add_training_args,
    apply_attention,
    run_main,
    run_training,
    set_threads,
    training_deadline,
)
from contriever_repro.training.config import PretrainConfig
from contriever_repro.training.engine import finish_distributed
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
    add_training_args(ap)
    args = ap.parse_args()

    cfg = PretrainConfig.from_dict(args.name, json.loads(args.experiment))
    flush_denormals(cfg)  # before any torch op starts the thread pool
    set_threads(args.threads)
    apply_attention(args)
    deadline = training_deadline(args, time.time())
    run_training(
        lambda: pretrain(
            cfg,
            args.init,
            dict(args.source),
            args.run_dir,
            export_dir=args.export,
            resume=args.resume,
            deadline=deadline,
            device=args.device,
            attempt=args.attempt,
        ),
        args.summary,
        (Preempted,),
        PREEMPTED_EXIT_CODE,
        finish_distributed,
    )


if __name__ == "__main__":
    run_main(main)
