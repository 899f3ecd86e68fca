"""The contrastive pre-training loop: MoCo or in-batch negatives, resumable, distributed.

One function, `pretrain`, runs on 1 CPU process, 1 GPU, or N processes launched by
`torchrun` (the process group comes from torchrun's environment; NCCL on GPUs, gloo on
CPU). What it adds to the building blocks (pretrain_data, augment, contrastive, optim):

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

from .augment import ViewMaker
from .checkpoint import Checkpoints, set_rng_state
from .contrastive import Encoder, InBatch, MoCo, export_query_encoder
from .errors import InputError
from .export import write_hf_folder
from .io import atomic_path
from .optim import build_optimizer, build_scheduler
from .pretrain_config import PretrainConfig
from .pretrain_data import ChunkSampler, PretrainBatches, TokenShards
from .progress import fmt_seconds

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", which is what a retry will do
STOP_SIGNALS = ("SIGUSR1", "SIGTERM")
METRICS_FILE = "metrics.jsonl"
EXPERIMENT_FILE = "experiment.json"


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


def _check_experiment(run_dir: Path, cfg: PretrainConfig, init: str, fresh: bool) -> None:
    """A run directory belongs to one training configuration; refuse to mix two."""
    path = run_dir / EXPERIMENT_FILE
    mine = {"init": str(init), **cfg.training_dict()}
    mine = json.loads(json.dumps(mine))
    if path.exists() and not fresh:
        saved = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        differ = [k for k in differ if k != "init"]  # the same model may move folders
        if differ:
            changes = ", ".join(f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}" for k in differ)
            raise InputError(
                f"the checkpoints here were made with another configuration of "
                f"pretraining.{cfg.name} ({changes}); "
                "restore the configuration or delete the run folder to start afresh",
                path,
            )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(mine, indent=1, sort_keys=True) + "\n", encoding="utf-8")


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
) -> dict:
    """Train `cfg` from `init` on the token shards in `source_dirs` (name → folder).

    `resume`: "auto" continues from the latest checkpoint if there is one, "require"
    fails without one, "never" refuses a run folder that already has checkpoints.
    `deadline` (epoch seconds) stops the run with a checkpoint, like a signal.
    `stop_at` ends the call after that step with a checkpoint (benchmarks, tests) and
    does not export. Returns a summary of the run.
    """
    if resume not in ("auto", "require", "never"):
        raise ValueError(f"resume must be auto, require or never, got {resume!r}")
    run_dir = Path(run_dir)
    env = setup_distributed(device or cfg.device)

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
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_experiment(run_dir, cfg, str(init), fresh=latest is None)
    env.barrier()

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
            export_hf_folder(model, tokenizer, export_dir, summary)
            log.info("exported the query encoder to %s", export_dir)
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
