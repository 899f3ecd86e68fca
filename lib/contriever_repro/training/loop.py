"""Contrastive pre-training: MoCo or in-batch negatives on cropped views of token shards.

One function, `pretrain`, runs on 1 CPU process, 1 GPU, or N processes launched by
`torchrun`. It builds the pre-training objective and batch source and hands them to the
training engine (engine.py), which fine-tuning (finetune.py) shares. Together:

* Checks before any GPU time: the shards' tokenizer equals the model's, the MoCo queue
  is a multiple of the global micro-batch, a required checkpoint exists, and a resumed
  run has the same training configuration as the one that wrote its checkpoints.
* Exact resume (see checkpoint.py): model, key encoder, queue, optimiser, scheduler,
  grad scaler, RNG states and the data position are restored, and the metrics log is cut
  back to the checkpoint, so an interrupted run ends with the same weights and the same
  loss curve as an uninterrupted one.
* Pre-emption: SIGUSR1/SIGTERM (SLURM pre-emption or time limit) or the optional
  `deadline` set a flag; at the end of the current step every rank agrees to stop,
  writes a checkpoint and `pretrain` raises `Preempted`, which the script turns into
  exit status 75 so that Snakemake's retry (or a SLURM requeue) resumes the run.
* Logging every `log_every` steps, averaged over the window and over ranks: loss,
  accuracy, stdq/stdk (collapse monitor), learning rate, sequences/s and tokens/s, the
  step time split into data / forward / backward / optimiser, and peak memory.

Choices beyond the reference (each recorded in the README):

* DDP runs with `broadcast_buffers=False`: the queue is identical on every rank by
  construction (all ranks enqueue the same all-gathered keys), so re-broadcasting its
  131072 × 768 floats at every forward, as DDP's default did, is pure overhead.
* Gradient accumulation (off by default): MoCo's momentum update runs once per optimiser
  step and every micro-batch's keys are enqueued; in-batch negatives are then those of
  one micro-batch. Neither is identical to a larger batch, which is why it is opt-in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .augment import ViewMaker
from .checkpoint import Checkpoints
from .config import PretrainConfig
from .contrastive import Encoder, InBatch, MoCo
from .engine import (  # noqa: F401 (re-exported: scripts and tests import them from here)
    PREEMPTED_EXIT_CODE,
    STOP_SIGNALS,
    Dist,
    Preempted,
    StopFlag,
    Trainee,
    _on_main,
    _set_tf32,
    check_experiment,
    copy_export,
    export_hf_folder,
    guarded_run,
    latest_checkpoint,
    load_init_model,
    load_tokenizer,
    publish_finished,
    read_metrics,
    run_steps,
    setup_distributed,
    start_state,
)
from .optim import build_optimisation
from .runfolder import EXPORT_DIR, experiment_record
from .shards import ChunkSampler, PretrainBatches, TokenShards

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- building


def flush_denormals(cfg) -> bool:
    """Set the CPU's flush-to-zero mode as `cfg.flush_denormal` asks; True if now on.

    The mode is a per-thread register that threads inherit when they are created, so
    call this at process start, before the first parallel torch op makes the intra-op
    thread pool (the training scripts do); afterwards it reaches the calling thread only.
    """
    return bool(cfg.flush_denormal and torch.set_flush_denormal(True))


def open_sources(
    cfg: PretrainConfig, source_dirs: Mapping[str, str | Path], tokenizer, rank: int, world: int
) -> dict[str, TokenShards]:
    """This rank's shards of every source, checked against the model's tokenizer."""
    missing = [s for s in cfg.sources if s not in source_dirs]
    if missing:
        raise InputError(f"pretraining.{cfg.name}.sources: no shard folder given for {missing}")
    out = {}
    for name in cfg.sources:
        try:
            out[name] = TokenShards.from_dir(source_dirs[name], tokenizer, rank, world, name)
        except InputError as err:
            raise InputError(f"source {name!r}: {err}") from None
    return out


def build_sampler(cfg: PretrainConfig, sources: Mapping[str, TokenShards], rank: int = 0):
    """The rank's chunk stream: a pure function of (seed, rank, example index)."""
    return ChunkSampler(
        sources,
        chunk_length=cfg.chunk_length,
        sampling_coefficient=cfg.sampling_coefficient,
        seed=cfg.seed,
        rank=rank,
        respect_doc_boundaries=cfg.respect_doc_boundaries,
        min_doc_tokens=cfg.min_doc_tokens,
    )


def build_views(cfg: PretrainConfig, tokenizer) -> ViewMaker:
    return ViewMaker.from_tokenizer(
        tokenizer,
        method=cfg.view_method,
        ratio_min=cfg.ratio_min,
        ratio_max=cfg.ratio_max,
        augmentation=cfg.augmentation,
        prob=cfg.augmentation_prob,
        ict_keep_prob=cfg.ict_keep_prob,
    )


def build_batches(
    cfg: PretrainConfig, sampler, views: ViewMaker, tokenizer, start_batch: int = 0
) -> PretrainBatches:
    """A rank's batch stream from `start_batch`: batch b is a pure function of the seed,
    so benchmarks rebuild exactly what a run trained on to count its tokens."""
    return PretrainBatches(
        sampler,
        views,
        cfg.batch_size_per_device,
        start_batch=start_batch,
        pad_id=tokenizer.pad_token_id or 0,
        pad_multiple=cfg.pad_multiple,
        max_width=cfg.chunk_length + 2,  # the longest view: a whole chunk, [CLS], [SEP]
    )


def build_objective(cfg: PretrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    encoder = Encoder(
        model,
        pooling=cfg.pooling,
        unpadded=cfg.unpadded,
        unpadded_key=f"pretraining.{cfg.name}.unpadded",
    )
    if cfg.objective == "moco":
        return MoCo(
            encoder,
            queue_size=cfg.queue_size,
            momentum=cfg.momentum,
            temperature=cfg.temperature,
            norm_query=cfg.norm_query,
            norm_doc=cfg.norm_doc,
            label_smoothing=cfg.label_smoothing,
            key_encoder_train_mode=cfg.key_encoder_train_mode,
            key_half_weights=cfg.key_encoder_half_weights,
        )
    return InBatch(
        encoder,
        temperature=cfg.temperature,
        norm_query=cfg.norm_query,
        norm_doc=cfg.norm_doc,
        label_smoothing=cfg.label_smoothing,
    )


# --------------------------------------------------------------------------- pre-training


def pretrain(
    cfg: PretrainConfig,
    init: str | Path,
    source_dirs: Mapping[str, str | Path],
    run_dir: str | Path,
    export_dir: str | Path | None = None,
    resume: str = "auto",
    deadline: float | None = None,
    device: str | None = None,
    sync_timing: bool = False,
    stop_at: int | None = None,
    attempt: int | None = None,
) -> dict:
    """Train `cfg` from `init` on the token shards in `source_dirs` (name → folder).

    `resume`: "auto" continues from the latest checkpoint if there is one, "require"
    fails without one, "never" refuses a run folder that already has checkpoints.
    `deadline` (epoch seconds) stops the run with a checkpoint, like a signal.
    `stop_at` ends the call after that step with a checkpoint (benchmarks, tests) and
    does not export. `attempt` is Snakemake's attempt number: an error that a retry
    cannot fix is recorded in the run folder, and a later attempt of the same
    configuration stops at once with it (runfolder.py). Returns a summary of the run.

    Rank 0 holds the run folder's lock for the whole call: a second trainer on the same
    folder (an orphan of a killed Snakemake, a second workflow) is refused, naming the
    holder. The finished model is written to `<run_dir>/export` and copied to
    `export_dir`, so deleting `export_dir` loses nothing.
    """
    if resume not in ("auto", "require", "never"):
        raise ValueError(f"resume must be auto, require or never, got {resume!r}")
    run_dir = Path(run_dir)
    env = setup_distributed(device or cfg.device)
    record = experiment_record(cfg.training_dict(), str(init))
    return guarded_run(
        run_dir,
        env,
        record,
        attempt,
        lambda: _train(
            cfg,
            init,
            source_dirs,
            run_dir,
            env,
            record,
            export_dir,
            resume,
            deadline,
            sync_timing,
            stop_at,
        ),  # fmt: skip
    )


def _train(
    cfg: PretrainConfig,
    init: str | Path,
    source_dirs: Mapping[str, str | Path],
    run_dir: Path,
    env: Dist,
    record: dict,
    export_dir: str | Path | None,
    resume: str,
    deadline: float | None,
    sync_timing: bool,
    stop_at: int | None,
) -> dict:
    # ---- everything that can be wrong is checked before the model touches a GPU
    tokenizer = load_tokenizer(init)
    sources = open_sources(cfg, source_dirs, tokenizer, env.rank, env.world_size)
    cfg.check_launch(env.world_size)
    ckpts = Checkpoints(run_dir, env.rank, env.world_size)
    latest = latest_checkpoint(ckpts, resume, run_dir)
    _on_main(env, lambda: check_experiment(run_dir, cfg.name, record))
    if stop_at is None and (done := publish_finished(run_dir, cfg, env, export_dir)):
        return done

    torch.manual_seed(cfg.seed + env.rank)
    np.random.seed((cfg.seed + env.rank) % 2**32)
    sampler = build_sampler(cfg, sources, env.rank)
    views = build_views(cfg, tokenizer)

    torch.manual_seed(cfg.seed)  # identical model and queue initialisation on every rank
    model = build_objective(cfg, load_init_model(init)).to(env.device)
    model.train()
    optimizer, scheduler, scaler = build_optimisation(cfg, model, env.device)

    def rank_state(next_micro: int) -> dict:
        sampler.position = next_micro * cfg.batch_size_per_device
        return {"sampler": sampler.state_dict()}

    tokens = {n: s.n_tokens for n, s in sources.items()}
    probs = np.round(sampler.probs, 4).tolist()
    trainee = Trainee(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        make_batches=lambda start: build_batches(cfg, sampler, views, tokenizer, start),
        # MoCo's momentum update runs once per optimiser step (see MoCo.forward).
        forward_kwargs=(lambda a: {"momentum_step": a == 0})
        if cfg.objective == "moco"
        else (lambda a: {}),
        rank_state=rank_state,
        describe=f"{cfg.objective}, source tokens {tokens} (p={probs})",
    )
    step, tracker, mine = start_state(trainee, ckpts, latest, env, run_dir, cfg.seed)
    if mine:
        sampler.load_state_dict(mine["sampler"])
    step = run_steps(
        cfg, trainee, env, run_dir, ckpts, step, tracker, deadline, sync_timing, stop_at
    )

    summary = {
        "name": cfg.name,
        "stage": "pre-training",
        "step": step,
        "steps": cfg.steps,
        "world_size": env.world_size,
        "global_batch": cfg.global_batch(env.world_size),
        "config": cfg.training_dict(),
        "init": str(init),
    }
    if export_dir is not None and step == cfg.steps:
        if env.is_main:
            kept = export_hf_folder(model, tokenizer, run_dir / EXPORT_DIR, summary)
            copy_export(kept, export_dir)
            log.info("exported the query encoder to %s (kept in %s)", export_dir, kept)
        env.barrier()
    return summary
