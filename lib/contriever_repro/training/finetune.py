"""Supervised fine-tuning: in-batch negatives plus extra negatives, on the shared engine.

The paper's MS MARCO recipe (appendix A.2) and its few-shot runs (A.3) are the same
job with other settings (FinetuneConfig):

* phase 1: each query comes with its gold passage and one random passage; every other
  passage of the global batch (gathered across ranks with gradient) is a negative too
  (contrastive.InBatch), ASAM, lr 1e-5, τ 0.05;
* phase 2: the same, with negatives mined by the phase-1 model (retrieval/mining.py)
  used in `hard_ratio` of the slots; the mined file must come from the phase-1 model
  the configuration names (its fingerprint is checked before training);
* few-shot: a small training split, `epochs` instead of steps, and the model selected
  on a dev set every `eval_every` updates with early stopping (engine.DevSelection);
* `objective: cross_encoder`: the same batches scored as (query, passage) pairs by a
  sequence classifier, a re-ranker rather than a retriever (cross_encoder.py).

Data loading, tokenisation and negative sampling are finetune_batches.py; the dev score
is computed by a function the caller passes (the evaluation stage's in-process scorer),
so that training does not depend on a later stage of the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.mined import read_mined
from ..data.training_sets import holdout_dev
from ..errors import InputError
from ..io import atomic_path, read_table
from ..models.export import METADATA_FILE
from ..models.fingerprint import check_mined_by
from .asam import ASAM
from .checkpoint import Checkpoints
from .config import FinetuneConfig
from .contrastive import Encoder, InBatch
from .cross_encoder import (
    PAIR_INPUTS,
    PAIR_STATS,
    CrossEncoderBatches,
    build_cross_encoder,
    export_cross_encoder,
)
from .engine import (
    BEST_DIR,
    DevSelection,
    Dist,
    Trainee,
    _on_main,
    check_experiment,
    copy_export,
    export_hf_folder,
    guarded_run,
    latest_checkpoint,
    load_init_model,
    load_tokenizer,
    publish_finished,
    run_steps,
    setup_distributed,
    start_state,
)
from .finetune_batches import FinetuneBatches, TrainingExamples, steps_for_epochs
from .finetune_data import (
    PathLike,
    named_negatives,
    namespace,
    per_dataset,
    read_passages,
    referenced_ids,
)
from .optim import build_optimisation
from .runfolder import EXPORT_DIR, experiment_record

log = logging.getLogger(__name__)

# (HF model, tokenizer) -> dev score, higher is better (evaluation.quick_eval.dev_scorer)
DevScorer = Callable[[torch.nn.Module, object], float]
# The dev tables (corpus, queries, qrels) -> their scorer
DevScorerFactory = Callable[[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]], DevScorer]


@dataclass
class TrainingData:
    """A fine-tuning run's data: training examples, the dev tables (or None) and what
    identifies them (part of the run's identity, so other data is not resumed into)."""

    examples: TrainingExamples
    dev: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None  # corpus, queries, qrels
    identity: dict


def load_training_data(
    cfg: FinetuneConfig,
    corpus: PathLike | Sequence[PathLike],
    queries: PathLike | Sequence[PathLike],
    records: PathLike | Sequence[PathLike],
    mined: PathLike | Sequence[PathLike] | None = None,
    mined_by_model: PathLike | None = None,
    dev_queries: PathLike | None = None,
    dev_records: PathLike | None = None,
) -> TrainingData:
    """Read and check everything a run trains on, before any model is loaded.

    `mined` (phase 2) must have been mined by the model in `mined_by_model`. The dev
    set is `dev_queries` + `dev_records` (a BEIR dev split) or a seeded hold-out of
    `cfg.dev_holdout` of the training records (SciFact: 809 → 729 train, 80 dev).

    With several data sets (cfg.datasets), `corpus`, `queries`, `records` and `mined`
    are sequences in that order (one path still stands for a single data set). Their
    ids become `<data set>/<id>` and they make one training set: positives and hard
    negatives stay within their data set, while random negatives are drawn from the
    passages of all data sets (their collections, or the `referenced` pools), as the
    in-batch negatives are. With one data set ids are kept as they are.
    """
    where = f"finetuning.{cfg.name}"
    if (mined is None) != (cfg.mined_by is None):
        raise InputError(
            f"{where}: mined_by is {cfg.mined_by!r} but "
            + ("no mined negatives were given" if mined is None else "mined negatives were given")
        )
    names = cfg.datasets
    if len(names) > 1 and cfg.has_dev:
        raise InputError(f"{where}.data: a dev set needs a single data set, got {list(names)}")
    paths = [
        per_dataset(value, what, names, where)
        for value, what in (
            (corpus, "corpus"),
            (queries, "queries"),
            (records, "records"),
            (mined, "mined negatives"),
        )
    ]
    if mined is not None:
        if any(p is None for p in paths[3]):
            raise InputError(f"{where}: mined_by is set but a data set has no mined negatives")
        if mined_by_model is None:
            raise InputError(f"{where}: the phase-1 model that mined {mined} is needed to check it")
    parts, counts = [], {}
    for name, *files in zip(names, *paths, strict=True):
        part = _read_dataset(cfg, name, *files, mined_by_model, dev_queries, dev_records)
        counts[name] = {"train_queries": len(part.records), "passages": len(part.corpus)}
        if len(names) > 1:  # namespaced now, so that the unprefixed copies can go
            part.queries, part.corpus, part.records, part.mined = namespace(
                name, part.queries, part.corpus, part.records, part.mined
            )
        parts.append(part)
    tables = [
        None if t[0] is None else pd.concat(t, ignore_index=True) if len(t) > 1 else t[0]
        for t in zip(*((p.queries, p.corpus, p.records, p.mined) for p in parts), strict=True)
    ]
    dev, fingerprint = parts[0].dev, parts[0].mined_by_fingerprint
    del parts  # the concatenated tables are all that is needed now
    examples = TrainingExamples.from_tables(*tables)
    del tables
    if cfg.passage_pool == "referenced":
        short = int((np.diff(examples.hard_offsets) < cfg.n_negatives).sum())
        log.info(
            "passage pool: %d referenced passage(s); %d of %d training queries have fewer "
            "than %d hard negative(s) and draw the rest at random from that pool",
            examples.n_passages, short, examples.n_examples, cfg.n_negatives,
        )  # fmt: skip
    identity = {
        "train_queries": int(examples.n_examples),
        "passages": int(examples.n_passages),
        "dev_queries": 0 if dev is None else int(len(dev[1])),
        "mined_by_fingerprint": fingerprint,
    }
    if len(names) > 1:
        identity["datasets"] = counts
    return TrainingData(examples, dev, identity)


@dataclass
class _DataSet:
    """One data set's tables as read (load_training_data namespaces them in place when
    there are several)."""

    name: str
    queries: pd.DataFrame
    corpus: pd.DataFrame  # the passage pool: the collection or its referenced passages
    records: pd.DataFrame  # training records (without a held-out dev part)
    mined: pd.DataFrame | None
    mined_by_fingerprint: str | None
    dev: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None


def _read_dataset(
    cfg: FinetuneConfig,
    name: str,
    corpus: PathLike,
    queries: PathLike,
    records: PathLike,
    mined: PathLike | None,
    mined_by_model: PathLike | None,
    dev_queries: PathLike | None,
    dev_records: PathLike | None,
) -> _DataSet:
    where = f"finetuning.{cfg.name}"
    queries_df = read_table(queries)
    records_df = read_table(records)
    mined_df, mined_meta = None, {}
    if mined is not None:
        check_mined_by(mined, mined_by_model)
        mined_df, mined_meta = read_mined(mined)
    dev_records_df = None
    if cfg.dev_holdout > 0:
        records_df, dev_records_df = holdout_dev(records_df, cfg.dev_holdout, cfg.seed)
    referenced = None
    if cfg.passage_pool == "referenced":
        if named_negatives(records_df, mined_df) == 0:
            raise InputError(
                f"{where}.passage_pool: 'referenced' draws random negatives among the "
                f"passages the training data names, but data set {name!r} names no negative "
                "(no mined negatives and empty negative_ids in its records): set mined_by "
                "or use passage_pool: corpus",
                records,
            )
        referenced = referenced_ids(records_df, mined_df)
    if referenced is not None and not cfg.has_dev:
        corpus_df, read = read_passages(corpus, referenced)
        log.info(
            "%s: kept %d referenced passage(s) of %d, reading the text of %d row(s) in %d of "
            "%d row group(s)",
            name, read.rows_kept, read.ids_scanned, read.rows_read, read.row_groups_read,
            read.row_groups,
        )  # fmt: skip
    else:
        corpus_df = read_table(corpus)
    dev = None
    if dev_records_df is not None:
        dev = _dev_tables(corpus_df, queries_df, dev_records_df)
    elif cfg.dev_split is not None:
        if dev_queries is None or dev_records is None:
            raise InputError(f"{where}.dev_split: the dev queries and records were not given")
        dev = _dev_tables(corpus_df, read_table(dev_queries), read_table(dev_records))
    if referenced is not None and dev is not None:  # dev scoring needs the collection
        kept = corpus_df["doc_id"].astype(str).isin(referenced)
        corpus_df = corpus_df[kept].reset_index(drop=True)
    return _DataSet(
        name,
        queries_df,
        corpus_df,
        records_df,
        mined_df,
        mined_meta.get("model_fingerprint"),
        dev,
    )


def _dev_tables(corpus, queries, records) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(corpus, queries, binary qrels) of a dev set: each record's positives count 1."""
    qrels = records[["query_id", "positive_ids"]].explode("positive_ids")
    qrels = qrels.rename(columns={"positive_ids": "doc_id"}).dropna()
    qrels = qrels.assign(relevance=1).reset_index(drop=True)
    dev_queries = queries[queries["query_id"].isin(records["query_id"])].reset_index(drop=True)
    return corpus, dev_queries, qrels


def build_model(cfg: FinetuneConfig, init: str | Path) -> InBatch:
    """In-batch objective around the init encoder, dropout set as the reference does
    (`--dropout` written into every Dropout module)."""
    hf = load_init_model(init)
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = cfg.dropout
    return InBatch(
        Encoder(
            hf,
            pooling=cfg.pooling,
            unpadded=cfg.unpadded,
            unpadded_key=f"finetuning.{cfg.name}.unpadded",
        ),
        temperature=cfg.temperature,
        norm_query=cfg.norm_query,
        norm_doc=cfg.norm_doc,
        label_smoothing=cfg.label_smoothing,
    )


def effective_config(cfg: FinetuneConfig, n_examples: int, world_size: int) -> FinetuneConfig:
    """`epochs` turned into steps for this training set and global batch."""
    if cfg.epochs is None:
        return cfg
    steps = steps_for_epochs(n_examples, cfg.epochs, cfg.global_batch(world_size))
    if cfg.schedule != "constant" and cfg.warmup_steps >= steps:
        raise InputError(
            f"finetuning.{cfg.name}.warmup_steps: {cfg.warmup_steps} is not below the "
            f"{steps} steps that {cfg.epochs} epochs of {n_examples} queries make"
        )
    return dataclasses.replace(cfg, steps=steps)


def finetune(
    cfg: FinetuneConfig,
    init: str | Path,
    data: TrainingData | Callable[[], TrainingData],
    run_dir: str | Path,
    export_dir: str | Path | None = None,
    resume: str = "auto",
    deadline: float | None = None,
    device: str | None = None,
    sync_timing: bool = False,
    stop_at: int | None = None,
    attempt: int | None = None,
    dev_scorer: DevScorerFactory | None = None,
) -> dict:
    """Fine-tune `init` on `data` (load_training_data, or a function that calls it: then
    the data is read inside the run folder's guard, so a bad input is recorded and later
    attempts do not read it again); other arguments as loop.pretrain.

    With a dev set, `dev_scorer(dev tables)(hf_model, tokenizer)` is evaluated every
    `cfg.eval_every` steps; the exported model is the best one on dev.
    """
    if resume not in ("auto", "require", "never"):
        raise ValueError(f"resume must be auto, require or never, got {resume!r}")
    run_dir = Path(run_dir)
    env = setup_distributed(device or cfg.device)

    def body() -> dict:
        loaded = data() if callable(data) else data
        if loaded.dev is not None and dev_scorer is None:
            raise InputError(f"finetuning.{cfg.name}: a dev set needs a dev scorer")
        run = effective_config(cfg, len(loaded.examples), env.world_size)
        record = experiment_record({**run.training_dict(), "data": loaded.identity}, str(init))
        scorer = dev_scorer(loaded.dev) if loaded.dev is not None else None
        return _finetune(
            run, init, loaded, run_dir, env, record, export_dir, resume, deadline,
            sync_timing, stop_at, scorer,
        )  # fmt: skip

    guard = experiment_record(cfg.training_dict(), str(init))
    return guarded_run(run_dir, env, guard, attempt, body)


def _finetune(
    cfg: FinetuneConfig,
    init: str | Path,
    data: TrainingData,
    run_dir: Path,
    env: Dist,
    record: dict,
    export_dir: str | Path | None,
    resume: str,
    deadline: float | None,
    sync_timing: bool,
    stop_at: int | None,
    dev_scorer: DevScorer | None,
) -> dict:
    tokenizer = load_tokenizer(init)
    ckpts = Checkpoints(run_dir, env.rank, env.world_size)
    latest = latest_checkpoint(ckpts, resume, run_dir)
    _on_main(env, lambda: check_experiment(run_dir, cfg.name, record, "finetuning"))
    if stop_at is None and (done := publish_finished(run_dir, cfg, env, export_dir)):
        return done

    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    model = (build_cross_encoder if cfg.cross_encoder else build_model)(cfg, init)
    model = model.to(env.device)
    model.train()
    optimizer, scheduler, scaler = build_optimisation(cfg, model, env.device)
    asam = ASAM(optimizer, rho=cfg.rho, eta=cfg.eta) if cfg.optimizer == "asam" else None

    summary = {
        "name": cfg.name,
        "stage": "fine-tuning",
        "steps": cfg.steps,
        "world_size": env.world_size,
        "global_batch": cfg.global_batch(env.world_size),
        "config": cfg.training_dict(),
        "init": str(init),
        "data": data.identity,
    }
    if cfg.cross_encoder:
        summary["objective"] = cfg.objective
    dev = None
    if data.dev is not None:

        def save_best(m: torch.nn.Module, step: int, score: float) -> None:
            meta = {**summary, "step": step, f"dev_{cfg.eval_metric}": score}
            export_hf_folder(m, tokenizer, run_dir / BEST_DIR, meta)

        dev = DevSelection(
            every=cfg.eval_every,
            evaluate=lambda m: dev_scorer(m.encoder.model, tokenizer),
            save_best=save_best,
            patience=cfg.patience,
            metric=cfg.eval_metric,
        )
    describe = (
        f"in-batch + {cfg.n_negatives} negative(s)/query (hard {cfg.hard_ratio}), "
        f"{cfg.optimizer}, {len(data.examples)} training queries"
    )
    batches, pairs = FinetuneBatches, {}
    if cfg.cross_encoder:  # the same draws, as a grid of (query, passage) pairs
        batches, pairs = CrossEncoderBatches, {"inputs": PAIR_INPUTS, "stats": PAIR_STATS}
        describe = f"cross-encoder, {describe}"
    trainee = Trainee(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        make_batches=lambda start: batches(
            data.examples,
            tokenizer,
            cfg.batch_size_per_device,
            rank=env.rank,
            world_size=env.world_size,
            seed=cfg.seed,
            start_batch=start,
            n_negatives=cfg.n_negatives,
            hard_ratio=cfg.hard_ratio,
            max_query_length=cfg.max_query_length,
            max_passage_length=cfg.max_passage_length,
            normalize_text=cfg.normalize_text,
            pad_id=tokenizer.pad_token_id or 0,
            pad_multiple=cfg.pad_multiple,
        ),
        asam=asam,
        dev=dev,
        describe=describe,
        **pairs,
    )
    step, tracker, _ = start_state(trainee, ckpts, latest, env, run_dir, cfg.seed)
    step = run_steps(
        cfg, trainee, env, run_dir, ckpts, step, tracker, deadline, sync_timing, stop_at
    )
    finished = step == cfg.steps or tracker.stopped_early
    summary.update({"step": step, "finished": finished})
    if dev is not None:
        summary.update(
            {
                "best_step": tracker.best_step,
                f"best_dev_{cfg.eval_metric}": tracker.best_score,
                "stopped_early": tracker.stopped_early,
            }
        )
    if export_dir is not None and finished:
        if env.is_main:
            kept = run_dir / EXPORT_DIR
            if cfg.cross_encoder:
                export_cross_encoder(model, tokenizer, kept, summary)
            elif dev is None:
                export_hf_folder(model, tokenizer, kept, summary)
            else:  # the dev-selected model, with the whole run's record
                copy_export(run_dir / BEST_DIR, kept)
                with atomic_path(kept / METADATA_FILE) as tmp:
                    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
            copy_export(kept, export_dir)
            what = "cross-encoder" if cfg.cross_encoder else "query encoder"
            log.info("exported the fine-tuned %s to %s (kept in %s)", what, export_dir, kept)
        env.barrier()
    return summary
