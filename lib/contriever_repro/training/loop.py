"""The contrastive pre-training loop: MoCo or in-batch negatives, resumable, distributed.

One function, `pretrain`, runs on 1 CPU process, 1 GPU, or N processes launched by
`torchrun` (the process group comes from torchrun's environment; NCCL on GPUs, gloo on
CPU). What it adds to the building blocks (shards, augment, contrastive, optim):

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

import contextlib
import json
import logging
import os
import resource
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError
from ..io import atomic_dir, atomic_path
from ..models.export import write_hf_folder
from ..progress import fmt_seconds
from .augment import ViewMaker
from .checkpoint import Checkpoints, set_rng_state
from .config import PretrainConfig
from .contrastive import Encoder, InBatch, MoCo, export_query_encoder
from .optim import build_optimizer, build_scheduler
from .runfolder import (
    EXPORT_DIR,
    NotRetried,
    RunFolderBusy,
    RunLock,
    attach_log,
    changed_config_message,
    check_not_failed_before,
    config_changes,
    detach_log,
    experiment_record,
    record_failure,
    write_experiment,
)
from .shards import ChunkSampler, PretrainBatches, TokenShards

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", which is what a retry will do
STOP_SIGNALS = ("SIGUSR1", "SIGTERM")
METRICS_FILE = "metrics.jsonl"


class Preempted(Exception):
    """Training stopped early on request; a checkpoint at `step` holds everything."""

    def __init__(self, step: int, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"stopped at step {step} ({reason}); the next run resumes from it")


# --------------------------------------------------------------------------- processes


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_max(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return values
        values = values.to(self.device)
        dist.all_reduce(values)
        return values / self.world_size


def setup_distributed(device: str | None = None) -> Dist:
    """Join torchrun's process group when launched by it; otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but no GPU is visible to this process")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


class StopFlag:
    """Set by SIGUSR1/SIGTERM or by passing a deadline; read once per step."""

    def __init__(self, deadline: float | None = None):
        self.reason: str | None = None
        self.deadline = deadline
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.reason is None:
            self.reason = f"signal {signal.Signals(signum).name}"

    def requested(self) -> str | None:
        if self.reason is None and self.deadline is not None and time.time() >= self.deadline:
            self.reason = "time limit reached"
        return self.reason


# --------------------------------------------------------------------------- building


def flush_denormals(cfg: PretrainConfig) -> bool:
    """Set the CPU's flush-to-zero mode as `cfg.flush_denormal` asks; True if now on.

    The mode is a per-thread register that threads inherit when they are created, so
    call this at process start, before the first parallel torch op makes the intra-op
    thread pool (scripts/pretrain.py does); afterwards it reaches the calling thread only.
    """
    return bool(cfg.flush_denormal and torch.set_flush_denormal(True))


def load_tokenizer(init: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(init))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the tokenizer of {init}: {err}") from None


def load_init_model(init: str | Path) -> torch.nn.Module:
    from transformers import AutoModel

    try:
        try:
            model = AutoModel.from_pretrained(str(init), add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option
            model = AutoModel.from_pretrained(str(init))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the initial model {init}: {err}") from None
    return model.float()


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


def build_objective(cfg: PretrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    encoder = Encoder(model, pooling=cfg.pooling)
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
        )
    return InBatch(
        encoder,
        temperature=cfg.temperature,
        norm_query=cfg.norm_query,
        norm_doc=cfg.norm_doc,
        label_smoothing=cfg.label_smoothing,
    )


def _autocast(cfg: PretrainConfig, device: torch.device):
    if cfg.precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _set_tf32(matmul: bool, cudnn: bool) -> tuple[bool, bool]:
    """TF32 on or off for CUDA matmuls and cuDNN ops; returns the modes it replaced."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    return before


def _matmul_mode(cfg: PretrainConfig, device: torch.device) -> tuple[bool, bool]:
    """`precision: tf32` turns TF32 on for the run, strict fp32 (and autocast) off;
    returns the modes to restore when training ends."""
    tf32 = cfg.precision == "tf32"
    if tf32 and device.type != "cuda":
        log.warning("precision tf32 only changes CUDA matmuls: this CPU run is plain fp32")
    on = tf32 and device.type == "cuda"
    return _set_tf32(on, on)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- metrics log


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric records up to `step`: the steps after it will be run again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and json.loads(line)["step"] <= step:
            kept.append(line + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _check_experiment(run_dir: Path, cfg: PretrainConfig, record: dict) -> None:
    """A run directory belongs to one training configuration; refuse to mix two."""
    changes = config_changes(run_dir, record)
    if changes:
        raise InputError(changed_config_message(cfg.name, run_dir, changes))
    write_experiment(run_dir, record)


def _on_main(env: Dist, fn):
    """Run `fn` on rank 0 only; if it fails, every rank stops (none waits for rank 0 at a
    collective that never comes). Returns fn's result on rank 0, None elsewhere."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after the other ranks know
            error = err
    if env.all_max(error is not None):
        if error is not None:
            raise error
        raise InputError("rank 0 stopped before training (its log says why); so does this rank")
    return result


# --------------------------------------------------------------------------- export


def export_hf_folder(
    model: torch.nn.Module, tokenizer, out_dir: str | Path, metadata: Mapping[str, Any]
) -> Path:
    """Write the query encoder as a Hugging Face and sentence-transformers folder with
    its model card (export.write_hf_folder).

    The weights are mapped with a strict key check (export_query_encoder) and loaded into
    a fresh `add_pooling_layer=False` model with `strict=True`, so a wrong key can never
    become silently random weights (the authors' load_retriever bug, spec §15 row 11).
    """
    from transformers import AutoModel

    inner = model.module if hasattr(model, "module") else model
    hf = inner.encoder_q.model if isinstance(inner, MoCo) else inner.encoder.model
    state = export_query_encoder(inner)
    try:
        fresh = AutoModel.from_config(hf.config, add_pooling_layer=False)
    except TypeError:
        fresh = AutoModel.from_config(hf.config)
    fresh.load_state_dict(state, strict=True)
    return write_hf_folder(fresh, tokenizer, out_dir, metadata)


def _finished_export(run_dir: Path, cfg: PretrainConfig) -> Path | None:
    """The run folder's export if it holds this configuration's final step."""
    meta = run_dir / EXPORT_DIR / "pretraining.json"
    if not meta.is_file():
        return None
    done = json.loads(meta.read_text(encoding="utf-8"))
    same = done.get("config") == json.loads(json.dumps(cfg.training_dict()))
    return meta.parent if same and done.get("step") == cfg.steps else None


def copy_export(src: str | Path, out_dir: str | Path) -> Path:
    """Publish the run folder's export as `out_dir` (hard links where the file system
    allows, else copies): deleting or replacing `out_dir` never touches the original."""
    import shutil

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with atomic_dir(out_dir) as tmp:
        shutil.copytree(src, tmp, copy_function=link_or_copy, dirs_exist_ok=True)
    return Path(out_dir)


# --------------------------------------------------------------------------- the loop


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
    lock = _on_main(env, RunLock(run_dir).acquire)
    handler = None
    try:
        handler = attach_log(run_dir, env.rank, attempt)
        _on_main(env, lambda: check_not_failed_before(run_dir, record, attempt))
        return _train(
            cfg, init, source_dirs, run_dir, env, record, export_dir, resume, deadline,
            sync_timing, stop_at,
        )  # fmt: skip
    except InputError as err:
        if env.is_main and not isinstance(err, (NotRetried, RunFolderBusy)):
            record_failure(run_dir, record, attempt, str(err))
        _log_to_run(handler, logging.ERROR, f"error: {err}")
        raise
    except Preempted as stop:
        _log_to_run(handler, logging.WARNING, str(stop))
        raise
    except BaseException as err:
        _log_to_run(handler, logging.ERROR, f"failed: {err!r}", exc=err)
        raise
    finally:
        if handler is not None:
            detach_log(handler)
        if lock is not None:
            lock.release()


def _log_to_run(handler, level: int, message: str, exc: BaseException | None = None) -> None:
    """Write the way an attempt ended to the run folder's log only (the caller reports
    it on stderr)."""
    if handler is None:
        return
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    handler.handle(log.makeRecord(log.name, level, __file__, 0, message, (), exc_info))


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
    latest = ckpts.latest()
    if latest is None and resume == "require":
        raise InputError(
            "resume was required but there is no checkpoint (checkpoints/latest) to resume",
            run_dir,
        )
    if latest is not None and resume == "never":
        raise InputError(
            f"already holds checkpoints ({latest.name}) and resume is 'never'; delete the "
            "folder to start afresh",
            run_dir,
        )
    _on_main(env, lambda: _check_experiment(run_dir, cfg, record))

    finished = _finished_export(run_dir, cfg)
    if finished is not None and stop_at is None:
        # A finished run (its output deleted, or a bookkeeping key changed): publish the
        # model it exported instead of loading the last checkpoint again.
        if export_dir is not None and env.is_main:
            copy_export(finished, export_dir)
            log.info("run already finished: copied its model %s to %s", finished, export_dir)
        env.barrier()
        return json.loads((finished / "pretraining.json").read_text(encoding="utf-8"))

    torch.manual_seed(cfg.seed + env.rank)
    np.random.seed((cfg.seed + env.rank) % 2**32)
    sampler = build_sampler(cfg, sources, env.rank)
    views = build_views(cfg, tokenizer)

    torch.manual_seed(cfg.seed)  # identical model and queue initialisation on every rank
    model = build_objective(cfg, load_init_model(init)).to(env.device)
    model.train()
    optimizer = build_optimizer(
        model,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        decay_norm_and_bias=cfg.decay_norm_and_bias,
    )
    scheduler = build_scheduler(
        optimizer, cfg.schedule, cfg.warmup_steps, cfg.steps, cfg.lr_min_ratio
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")

    step = 0
    if latest is not None:
        shared, mine = ckpts.load(latest, map_location=env.device)
        model.load_state_dict(shared["model"], strict=True)
        optimizer.load_state_dict(shared["optimizer"])
        scheduler.load_state_dict(shared["scheduler"])
        scaler.load_state_dict(shared["scaler"])
        sampler.load_state_dict(mine["sampler"])
        step = int(shared["step"])
        set_rng_state(mine["rng"])
        if env.is_main:
            _truncate_metrics(run_dir / METRICS_FILE, step)
        log.info("resumed from %s at step %d", latest, step)
    else:
        torch.manual_seed(cfg.seed + 1000 * (env.rank + 1))  # per-rank dropout streams
        if env.is_main:
            _truncate_metrics(run_dir / METRICS_FILE, 0)

    wrapped = model
    if env.world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[env.local_rank] if env.device.type == "cuda" else None,
            broadcast_buffers=False,
        )

    accum = cfg.grad_accumulation
    start_batch = step * accum
    batches = PretrainBatches(
        sampler,
        views,
        cfg.batch_size_per_device,
        start_batch=start_batch,
        pad_id=tokenizer.pad_token_id or 0,
    )
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=env.device.type == "cuda",
        prefetch_factor=4 if cfg.num_workers else None,
        # Its own generator: creating the iterator must not consume the global RNG,
        # whose state is the dropout stream a resumed run restores.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    stop = StopFlag(deadline)
    stop.install()
    cuda = env.device.type == "cuda"

    def sync() -> None:
        if sync_timing and cuda:
            torch.cuda.synchronize(env.device)

    log.info(
        "pre-training %s: %s, %d process(es) on %s, global batch %d (%d/device x %d "
        "accumulation), steps %d from %d, sources %s (p=%s)",
        cfg.name,
        cfg.objective,
        env.world_size,
        env.device,
        cfg.global_batch(env.world_size),
        cfg.batch_size_per_device,
        accum,
        cfg.steps,
        step,
        {n: s.n_tokens for n, s in sources.items()},
        np.round(sampler.probs, 4).tolist(),
    )
    keys = ("loss", "accuracy", "stdq", "stdk")
    window = {k: 0.0 for k in ("data", "forward", "backward", "optimizer")}
    window_stats = torch.zeros(len(keys), device=env.device)
    window_steps, window_seqs, window_tokens = 0, 0, 0
    window_start = time.perf_counter()
    run_start, run_start_step = window_start, step
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    micro = start_batch
    reason = None
    tf32_before = _matmul_mode(cfg, env.device)
    try:
        it = iter(loader)
        while step < end:
            stats_sum = torch.zeros(len(keys), device=env.device)
            for a in range(accum):
                t0 = time.perf_counter()
                batch = next(it)
                if batch["index"] != micro:
                    raise RuntimeError(f"data stream out of order: {batch['index']} != {micro}")
                tensors = [
                    batch[k].to(env.device, non_blocking=True)
                    for k in ("q_input_ids", "q_attention_mask", "k_input_ids", "k_attention_mask")
                ]
                sync()
                t1 = time.perf_counter()
                last = a == accum - 1
                no_sync = wrapped.no_sync() if env.world_size > 1 and not last else None
                with no_sync or contextlib.nullcontext():
                    with _autocast(cfg, env.device):
                        if cfg.objective == "moco":
                            loss, stats = wrapped(*tensors, momentum_step=a == 0)
                        else:
                            loss, stats = wrapped(*tensors)
                    sync()
                    t2 = time.perf_counter()
                    scaler.scale(loss / accum).backward()
                    sync()
                    t3 = time.perf_counter()
                stats_sum += torch.stack([stats[k].float() for k in keys])
                window["data"] += t1 - t0
                window["forward"] += t2 - t1
                window["backward"] += t3 - t2
                window_seqs += 2 * tensors[0].shape[0]
                window_tokens += int(
                    batch["q_attention_mask"].sum() + batch["k_attention_mask"].sum()
                )
                micro += 1
            t4 = time.perf_counter()
            if cfg.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            window["optimizer"] += time.perf_counter() - t4
            step += 1
            sampler.position = micro * cfg.batch_size_per_device
            window_stats += stats_sum / accum  # stays on the device: no sync per step
            window_steps += 1

            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                elapsed = now - window_start
                record = {"step": step, "lr": lr}
                means = (env.all_mean(window_stats) / window_steps).tolist()
                record.update(dict(zip(keys, means, strict=True)))
                record.update(
                    {
                        "seq_per_s": window_seqs * env.world_size / elapsed,
                        "tok_per_s": float(window_tokens) * env.world_size / elapsed,
                        "step_s": elapsed / window_steps,
                        **{
                            f"{k}_s": window[k] / window_steps
                            for k in ("data", "forward", "backward", "optimizer")
                        },
                        "peak_mem_mb": _peak_memory_mb(env.device),
                    }
                )
                if env.is_main:
                    _log_record(record, cfg, run_start, run_start_step, now)
                    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                window = dict.fromkeys(window, 0.0)
                window_stats.zero_()
                window_steps, window_seqs, window_tokens = 0, 0, 0
                window_start = time.perf_counter()

            reason = env.all_max(stop.requested() is not None) and (
                stop.requested() or "another rank was asked to stop"
            )
            at_end = step == end
            if step % cfg.checkpoint_every == 0 or at_end or reason:
                _save(ckpts, cfg, step, model, optimizer, scheduler, scaler, sampler, env)
            if reason and not at_end:
                raise Preempted(step, reason)
    finally:
        _set_tf32(*tf32_before)
        stop.restore()
        del loader

    summary = {
        "name": cfg.name,
        "step": step,
        "steps": cfg.steps,
        "world_size": env.world_size,
        "global_batch": cfg.global_batch(env.world_size),
        "train_seconds_this_call": time.perf_counter() - run_start,
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


def _save(ckpts, cfg, step, model, optimizer, scheduler, scaler, sampler, env) -> None:
    shared = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": cfg.training_dict(),
    }
    ckpts.save(
        step,
        shared,
        {"sampler": sampler.state_dict(), "next_batch": step * cfg.grad_accumulation},
        keep_last=cfg.keep_last,
        keep_every=cfg.keep_every,
        barrier=env.barrier,
    )


def _log_record(record: dict, cfg: PretrainConfig, start: float, start_step: int, now: float):
    done = record["step"] - start_step
    rate = done / max(now - start, 1e-9)
    eta = fmt_seconds((cfg.steps - record["step"]) / rate) if rate > 0 else "?"
    log.info(
        "step %d/%d loss %.4f acc %.3f stdq %.4f stdk %.4f lr %.3g | %.1f seq/s %.0f tok/s "
        "| step %.3fs (data %.3f fwd %.3f bwd %.3f opt %.3f) | mem %.0f MiB | ETA %s",
        record["step"],
        cfg.steps,
        record["loss"],
        record["accuracy"],
        record["stdq"],
        record["stdk"],
        record["lr"],
        record["seq_per_s"],
        record["tok_per_s"],
        record["step_s"],
        record["data_s"],
        record["forward_s"],
        record["backward_s"],
        record["optimizer_s"],
        record["peak_mem_mb"],
        eta,
    )
