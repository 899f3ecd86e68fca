"""Supervised fine-tuning of one experiment (rule finetune; launched by torchrun).

Exit statuses as scripts/pretrain.py: 75 = stopped early with a checkpoint (a retry
resumes exactly), 2 = bad input (configuration, data, mined negatives of another
phase-1 model), which no retry fixes.
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
from contriever_repro.errors import InputError
from contriever_repro.evaluation.quick_eval import dev_scorer
from contriever_repro.models.spec import ModelSpec
from contriever_repro.training.config import FinetuneConfig
from contriever_repro.training.engine import PREEMPTED_EXIT_CODE, Preempted, finish_distributed
from contriever_repro.training.finetune import finetune, load_training_data
from contriever_repro.training.loop import flush_denormals

log = logging.getLogger("finetune")


def check_datasets(cfg: FinetuneConfig, args: argparse.Namespace) -> None:
    """One --corpus/--queries/--records (/--mined) per data set, named by --dataset in
    the order of the experiment's `data`: a mis-wired rule fails here, not in training."""
    names = list(cfg.datasets)
    where = f"finetuning.{cfg.name}"
    given = args.dataset if args.dataset is not None else names if len(names) == 1 else None
    if given != names:
        raise InputError(
            f"{where}.data is {names}: pass --dataset once per data set in that order "
            f"(got {args.dataset})"
        )
    for option in ("corpus", "queries", "records", "mined"):
        values = getattr(args, option)
        if values is not None and len(values) != len(names):
            raise InputError(
                f"{where}: {len(values)} --{option} given for {len(names)} data set(s) {names}"
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True, help="experiment name (config.finetuning key)")
    ap.add_argument("--experiment", required=True, help="config.finetuning entry as JSON")
    ap.add_argument("--init", required=True, help="HF model folder to start from")
    ap.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="data set name (config datasets key), once per data set in the order of the "
        "experiment's `data`; required with more than one data set",
    )
    ap.add_argument(
        "--corpus", action="append", required=True, help="passages parquet (doc_id, title, text)"
    )
    ap.add_argument("--queries", action="append", required=True, help="training queries parquet")
    ap.add_argument("--records", action="append", required=True, help="training records parquet")
    ap.add_argument(
        "--mined", action="append", default=None, help="mined hard negatives parquet (phase 2)"
    )
    ap.add_argument("--mined-by-model", default=None, help="the phase-1 model folder")
    ap.add_argument("--dev-queries", default=None, help="dev queries parquet (dev_split)")
    ap.add_argument("--dev-records", default=None, help="dev records parquet (dev_split)")
    add_training_args(ap)
    args = ap.parse_args()

    cfg = FinetuneConfig.from_dict(args.name, json.loads(args.experiment))
    check_datasets(cfg, args)
    flush_denormals(cfg)  # before any torch op starts the thread pool
    set_threads(args.threads)
    apply_attention(args)
    deadline = training_deadline(args, time.time())

    def data():
        return load_training_data(
            cfg,
            args.corpus,
            args.queries,
            args.records,
            mined=args.mined,
            mined_by_model=args.mined_by_model,
            dev_queries=args.dev_queries,
            dev_records=args.dev_records,
        )

    def scorer(dev):
        # The dev set is encoded as the evaluation encodes the exported model.
        spec = ModelSpec(
            name=cfg.name,
            source=args.init,
            pooling=cfg.pooling,
            max_query_length=cfg.max_query_length,
            max_passage_length=cfg.max_passage_length,
        )
        return dev_scorer(spec, *dev, metric=cfg.eval_metric)

    run_training(
        lambda: finetune(
            cfg,
            args.init,
            data,
            args.run_dir,
            export_dir=args.export,
            resume=args.resume,
            deadline=deadline,
            device=args.device,
            attempt=args.attempt,
            dev_scorer=scorer,
        ),
        args.summary,
        (Preempted,),
        PREEMPTED_EXIT_CODE,
        finish_distributed,
    )


if __name__ == "__main__":
    run_main(main)
