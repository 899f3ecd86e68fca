"""The training engine shared by contrastive pre-training and supervised fine-tuning.

Pre-training (loop.py) and fine-tuning (finetune.py) differ in their objective (MoCo,
in-batch negatives, or a cross-encoder scoring (query, passage) pairs), their batch
source (cropped views of token shards, or queries with gold and negative passages; the
Trainee names the batch tensors its objective takes and the stats it logs) and a dev
evaluation (few-shot early stopping). Everything else is this module, written once:

* processes: 1 CPU process, 1 GPU, or N processes launched by torchrun (NCCL on GPUs,
  gloo on CPU); DDP with `broadcast_buffers=False`;
* exact resume (checkpoint.py): model, optimiser, scheduler, grad scaler, the RNG states
  of every rank, the data position and the dev tracker; the metrics log is cut back to
  the checkpoint, so an interrupted run ends with the same weights and loss curve;
* pre-emption: SIGUSR1/SIGTERM or a deadline set a flag; at the end of the step every
  rank agrees to stop, a checkpoint is written and `Preempted` is raised (exit 75);
* precision modes (fp32, tf32, bf16 and fp16 autocast), gradient accumulation, gradient
  clipping, and ASAM's two passes per step (asam.py);
* logging every `log_every` steps, averaged over the window and the ranks: loss,
  accuracy, stdq/stdk (a cross-encoder: margin/score_std), lr, sequences/s and
  tokens/s, the step time split into data / forward / backward / optimiser, peak
  memory, ETA; every record in metrics.jsonl;
* the run-folder discipline (runfolder.py): a lock held by rank 0, a log per attempt,
  errors a retry cannot fix recorded so later attempts stop at once, and a changed
  configuration refused;
* the strict Hugging Face export of the query encoder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from ..errors import InputError
from ..io import atomic_dir, atomic_path
from ..models.attention import from_pretrained
from ..models.export import METADATA_FILE, write_hf_folder
from ..progress import fmt_seconds
from .checkpoint import Checkpoints, set_rng_state
from .contrastive import MoCo, export_query_encoder
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
    record_failure,
    write_experiment,
)

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", which is what a retry will do
STOP_SIGNALS = ("SIGUSR1", "SIGTERM")
METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"  # the dev-selected model of a run with a dev evaluation
STAT_KEYS = ("loss", "accuracy", "stdq", "stdk")
# The batch tensors a bi-encoder objective (MoCo, InBatch) takes, in its argument order.
BATCH_INPUTS = ("q_input_ids", "q_attention_mask", "k_input_ids", "k_attention_mask")
TIMERS = ("data", "forward", "backward", "optimizer")


class Preempted(Exception):
    """Training stopped early on request; a checkpoint at `step` holds everything."""

    def __init__(self, step: int, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"stopped at step {step} ({reason}); the next run resumes from it")


class TrainingConfig(Protocol):
    """What the engine reads of an experiment (PretrainConfig and FinetuneConfig)."""

    name: str
    steps: int
    batch_size_per_device: int
    grad_accumulation: int
    precision: str
    max_grad_norm: float | None
    num_workers: int
    seed: int
    log_every: int
    checkpoint_every: int
    keep_every: int
    keep_last: int
    compile: str | None
    compile_mode: str | None

    @property
    def cudagraphs(self) -> bool: ...

    def training_dict(self) -> dict: ...

    def global_batch(self, world_size: int | None = None) -> int: ...


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

    def broadcast_float(self, value: float | None) -> float:
        """Rank 0's value on every rank (the dev score, computed on rank 0 only)."""
        if self.world_size == 1:
            return float(value)
        t = torch.tensor([float(value) if self.is_main else 0.0], device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())


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


def finish_distributed() -> None:
    """Leave the process group (a training script's last step): a process that exits
    while gloo's threads still run can abort at interpreter shutdown."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


# --------------------------------------------------------------------------- loading


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
            model = from_pretrained(AutoModel, str(init), add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option
            model = from_pretrained(AutoModel, str(init))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the initial model {init}: {err}") from None
    return model.float()


# --------------------------------------------------------------------------- precision


def compile_encoders(
    model: torch.nn.Module, backend: str, where: str = "compile", mode: str | None = None
) -> int:
    """Compile the forward of every outermost Hugging Face model inside `model` (MoCo's
    two encoders, in-batch's one, a cross-encoder) with `torch.compile(backend=...,
    mode=...)`; returns how many. `nn.Module.compile` keeps parameter names, so
    checkpoints and the export are unchanged. Shapes are static: with pad_multiple 32 a
    256-token chunk's views take 5 widths, within dynamo's cache of 8 graphs per
    function. An unknown backend is an InputError naming `where`.
    """
    import torch._dynamo as dynamo
    from transformers import PreTrainedModel

    if backend not in dynamo.list_backends(exclude_tags=()):
        raise InputError(
            f"{where}: unknown torch.compile backend {backend!r}; known: {dynamo.list_backends()}"
        )

    done: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and not any(
            module is sub for outer in done for sub in outer.modules()
        ):
            module.compile(backend=backend, mode=mode, dynamic=False)
            done.append(module)
    return len(done)


def autocast(precision: str, device: torch.device):
    if precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _set_tf32(matmul: bool, cudnn: bool) -> tuple[bool, bool]:
    """TF32 on or off for CUDA matmuls and cuDNN ops; returns the modes it replaced."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    return before


def _matmul_mode(precision: str, device: torch.device) -> tuple[bool, bool]:
    """`precision: tf32` turns TF32 on for the run, strict fp32 (and autocast) off;
    returns the modes to restore when training ends."""
    tf32 = precision == "tf32"
    if tf32 and device.type != "cuda":
        log.warning("precision tf32 only changes CUDA matmuls: this CPU run is plain fp32")
    on = tf32 and device.type == "cuda"
    return _set_tf32(on, on)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- metrics log


def truncate_metrics(path: Path, step: int) -> None:
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


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


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


def finished_export(run_dir: Path, cfg: TrainingConfig) -> Path | None:
    """The run folder's export if this configuration's training finished and wrote it."""
    meta = run_dir / EXPORT_DIR / METADATA_FILE
    if not meta.is_file():
        return None
    done = json.loads(meta.read_text(encoding="utf-8"))
    same = done.get("config") == json.loads(json.dumps(cfg.training_dict()))
    return meta.parent if same and done.get("finished", done.get("step") == cfg.steps) else None


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


# --------------------------------------------------------------------------- run folder


def check_experiment(run_dir: Path, name: str, record: dict, section: str = "pretraining") -> None:
    """A run directory belongs to one training configuration; refuse to mix two."""
    changes = config_changes(run_dir, record)
    if changes:
        raise InputError(changed_config_message(name, run_dir, changes, section))
    write_experiment(run_dir, record)


def guarded_run(
    run_dir: Path,
    env: Dist,
    record: dict,
    attempt: int | None,
    body: Callable[[], dict],
) -> dict:
    """Run `body` holding the run folder's lock (rank 0), with this attempt's log in the
    run folder; an error no retry can fix is recorded so that later attempts of the same
    configuration stop at once (runfolder.py)."""
    lock = _on_main(env, RunLock(run_dir).acquire)
    handler = None
    try:
        handler = attach_log(run_dir, env.rank, attempt)
        _on_main(env, lambda: check_not_failed_before(run_dir, record, attempt))
        return body()
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


def latest_checkpoint(ckpts: Checkpoints, resume: str, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, as `resume` (auto | require | never) allows."""
    if resume not in ("auto", "require", "never"):
        raise ValueError(f"resume must be auto, require or never, got {resume!r}")
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
    return latest


def publish_finished(run_dir: Path, cfg: TrainingConfig, env: Dist, export_dir) -> dict | None:
    """A finished run (its output deleted, or a bookkeeping key changed): publish the
    model it exported instead of loading the last checkpoint again. None if unfinished."""
    finished = finished_export(run_dir, cfg)
    if finished is None:
        return None
    if export_dir is not None and env.is_main:
        copy_export(finished, export_dir)
        log.info("run already finished: copied its model %s to %s", finished, export_dir)
    env.barrier()
    return json.loads((finished / METADATA_FILE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the loop


@dataclass
class DevSelection:
    """Evaluate on a dev set every `every` steps (and at step 0) on rank 0, keep the best
    model in `<run>/best`, stop after `patience` evaluations without improvement."""

    every: int
    evaluate: Callable[[torch.nn.Module], float]  # higher is better
    save_best: Callable[[torch.nn.Module, int, float], None]
    patience: int | None = None
    metric: str = "dev"


@dataclass
class DevTracker:
    """The dev selection's state, saved in every checkpoint (resume is exact)."""

    best_score: float = float("-inf")
    best_step: int = -1
    evaluations: int = 0
    since_best: int = 0
    stopped_early: bool = False

    def update(self, score: float, step: int) -> bool:
        """Record one evaluation; True if it is a new best."""
        self.evaluations += 1
        if score > self.best_score:
            self.best_score, self.best_step, self.since_best = score, step, 0
            return True
        self.since_best += 1
        return False


@dataclass
class Trainee:
    """What one engine run trains, and the parts that differ between the two jobs."""

    model: torch.nn.Module  # objective: (*batch[inputs], **kw) -> loss, stats
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    make_batches: Callable[[int], Iterable[dict]]  # first micro-batch index -> stream
    asam: Any = None  # asam.ASAM wrapping `optimizer`, or None
    forward_kwargs: Callable[[int], dict] = field(default=lambda a: {})  # per micro-batch
    rank_state: Callable[[int], dict] = field(default=lambda micro: {})  # for checkpoints
    dev: DevSelection | None = None
    describe: str = ""
    # The batch tensors passed to the model, in order (sequences and tokens are counted
    # from the `*input_ids` and `*attention_mask` ones), and the stats it returns: loss
    # and accuracy first, then what the log shows after them.
    inputs: tuple[str, ...] = BATCH_INPUTS
    stats: tuple[str, ...] = STAT_KEYS


def restore(
    trainee: Trainee, ckpts: Checkpoints, latest: Path, env: Dist
) -> tuple[int, dict, dict]:
    """Load a checkpoint into the trainee; (step, shared state, this rank's state)."""
    shared, mine = ckpts.load(latest, map_location=env.device)
    trainee.model.load_state_dict(shared["model"], strict=True)
    trainee.optimizer.load_state_dict(shared["optimizer"])
    trainee.scheduler.load_state_dict(shared["scheduler"])
    trainee.scaler.load_state_dict(shared["scaler"])
    set_rng_state(mine["rng"])
    log.info("resumed from %s at step %d", latest, int(shared["step"]))
    return int(shared["step"]), shared, mine


def run_steps(
    cfg: TrainingConfig,
    trainee: Trainee,
    env: Dist,
    run_dir: Path,
    ckpts: Checkpoints,
    step: int,
    tracker: DevTracker,
    deadline: float | None = None,
    sync_timing: bool = False,
    stop_at: int | None = None,
) -> int:
    """Train from `step` to cfg.steps (or `stop_at`, or an early stop); returns the step
    reached. Checkpoints every `checkpoint_every` steps and at the end; raises Preempted
    after a checkpoint when asked to stop."""
    model = trainee.model
    if cfg.compile:
        n = compile_encoders(model, cfg.compile, f"{cfg.name}.compile", cfg.compile_mode)
        log.info(
            "compiled %d encoder(s) with torch.compile(backend=%r, mode=%r)",
            n,
            cfg.compile,
            cfg.compile_mode,
        )
    wrapped = model
    if env.world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[env.local_rank] if env.device.type == "cuda" else None,
            broadcast_buffers=False,
        )
    accum = cfg.grad_accumulation
    micro = step * accum
    loader = torch.utils.data.DataLoader(
        trainee.make_batches(micro),
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
        "training %s: %s%d process(es) on %s, global batch %d (%d/device x %d accumulation),"
        " steps %d from %d",
        cfg.name,
        f"{trainee.describe}, " if trainee.describe else "",
        env.world_size,
        env.device,
        cfg.global_batch(env.world_size),
        cfg.batch_size_per_device,
        accum,
        cfg.steps,
        step,
    )
    stat_keys = trainee.stats
    id_keys = [k for k in trainee.inputs if k.endswith("input_ids")]
    mask_keys = [k for k in trainee.inputs if k.endswith("attention_mask")]
    window = dict.fromkeys(TIMERS, 0.0)
    window_stats = torch.zeros(len(stat_keys), device=env.device)
    window_steps, window_seqs, window_tokens = 0, 0, 0
    window_start = time.perf_counter()
    run_start, run_start_step = window_start, step
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    dev = trainee.dev
    tf32_before = _matmul_mode(cfg.precision, env.device)

    def passes(batches: list[list[torch.Tensor]], first_pass: bool) -> torch.Tensor:
        """Forward and backward over the step's micro-batches; their summed stats."""
        stats_sum = torch.zeros(len(stat_keys), device=env.device)
        for a, tensors in enumerate(batches):
            t1 = time.perf_counter()
            last = a == accum - 1
            no_sync = wrapped.no_sync() if env.world_size > 1 and not last else None
            if cfg.cudagraphs:
                # The last pass's outputs are dead: its graphs' memory may be reused.
                torch.compiler.cudagraph_mark_step_begin()
            with no_sync or contextlib.nullcontext():
                with autocast(cfg.precision, env.device):
                    loss, stats = wrapped(*tensors, **trainee.forward_kwargs(a))
                sync()
                t2 = time.perf_counter()
                trainee.scaler.scale(loss / accum).backward()
                sync()
                t3 = time.perf_counter()
            window["forward"] += t2 - t1
            window["backward"] += t3 - t2
            if first_pass:
                stats_sum += torch.stack([stats[k].float() for k in stat_keys])
        return stats_sum

    def evaluate_dev(at: int) -> None:
        """Dev score on rank 0, shared with all ranks; the best model kept; early stop."""
        score = None
        if env.is_main:
            model.eval()
            with torch.no_grad():
                score = dev.evaluate(model)
            model.train()
        score = env.broadcast_float(score)
        if tracker.update(score, at) and env.is_main:
            dev.save_best(model, at, score)
        if dev.patience is not None and tracker.since_best >= dev.patience:
            tracker.stopped_early = True
        if env.is_main:
            record = {"step": at, f"dev_{dev.metric}": score, "best_step": tracker.best_step}
            log.info(
                "step %d dev %s %.4f (best %.4f at step %d%s)",
                at,
                dev.metric,
                score,
                tracker.best_score,
                tracker.best_step,
                ", stopping early" if tracker.stopped_early else "",
            )
            _append_metrics(run_dir, record)

    try:
        if dev is not None and step == 0 and tracker.evaluations == 0:
            evaluate_dev(0)
        it = iter(loader)
        while step < end and not tracker.stopped_early:
            batches = []
            for _ in range(accum):
                t0 = time.perf_counter()
                batch = next(it)
                if batch["index"] != micro:
                    raise RuntimeError(f"data stream out of order: {batch['index']} != {micro}")
                tensors = [batch[k].to(env.device, non_blocking=True) for k in trainee.inputs]
                sync()
                window["data"] += time.perf_counter() - t0
                batches.append(tensors)
                window_seqs += sum(batch[k].shape[0] for k in id_keys)
                window_tokens += int(sum(batch[k].sum() for k in mask_keys))
                micro += 1
            stats_sum = passes(batches, first_pass=True)
            if trainee.asam is not None:
                # ASAM: the gradient at the perturbed weights, then the step from the
                # original ones (asam.py); the second pass's stats are not logged.
                t4 = time.perf_counter()
                trainee.asam.ascend()
                trainee.optimizer.zero_grad(set_to_none=True)
                window["optimizer"] += time.perf_counter() - t4
                passes(batches, first_pass=False)
                trainee.asam.descend()
            t4 = time.perf_counter()
            if cfg.max_grad_norm is not None:
                trainee.scaler.unscale_(trainee.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            lr = trainee.scheduler.get_last_lr()[0]
            trainee.scaler.step(trainee.optimizer)
            trainee.scaler.update()
            trainee.scheduler.step()
            trainee.optimizer.zero_grad(set_to_none=True)
            sync()
            window["optimizer"] += time.perf_counter() - t4
            step += 1
            window_stats += stats_sum / accum  # stays on the device: no sync per step
            window_steps += 1

            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                elapsed = now - window_start
                record = {"step": step, "lr": lr}
                means = (env.all_mean(window_stats) / window_steps).tolist()
                record.update(dict(zip(stat_keys, means, strict=True)))
                record.update(
                    {
                        "seq_per_s": window_seqs * env.world_size / elapsed,
                        "tok_per_s": float(window_tokens) * env.world_size / elapsed,
                        "step_s": elapsed / window_steps,
                        **{f"{k}_s": window[k] / window_steps for k in TIMERS},
                        "peak_mem_mb": _peak_memory_mb(env.device),
                    }
                )
                if env.is_main:
                    _log_record(record, cfg, run_start, run_start_step, now, stat_keys[2:])
                    _append_metrics(run_dir, record)
                window = dict.fromkeys(window, 0.0)
                window_stats.zero_()
                window_steps, window_seqs, window_tokens = 0, 0, 0
                window_start = time.perf_counter()

            if dev is not None and (step % dev.every == 0 or step == end):
                evaluate_dev(step)

            reason = env.all_max(stop.requested() is not None) and (
                stop.requested() or "another rank was asked to stop"
            )
            at_end = step == end or tracker.stopped_early
            if step % cfg.checkpoint_every == 0 or at_end or reason:
                save_checkpoint(ckpts, cfg, step, trainee, tracker, env, micro)
            if reason and not at_end:
                raise Preempted(step, reason)
    finally:
        _set_tf32(*tf32_before)
        stop.restore()
        del loader
    return step


def save_checkpoint(
    ckpts: Checkpoints,
    cfg: TrainingConfig,
    step: int,
    trainee: Trainee,
    tracker: DevTracker,
    env: Dist,
    next_micro: int,
) -> None:
    shared = {
        "step": step,
        "model": trainee.model.state_dict(),
        "optimizer": trainee.optimizer.state_dict(),
        "scheduler": trainee.scheduler.state_dict(),
        "scaler": trainee.scaler.state_dict(),
        "config": cfg.training_dict(),
        "dev": vars(tracker).copy(),
    }
    ckpts.save(
        step,
        shared,
        {**trainee.rank_state(next_micro), "next_batch": next_micro},
        keep_last=cfg.keep_last,
        keep_every=cfg.keep_every,
        barrier=env.barrier,
    )


def _log_record(
    record: dict,
    cfg: TrainingConfig,
    start: float,
    start_step: int,
    now: float,
    extra: tuple[str, ...] = STAT_KEYS[2:],
):
    done = record["step"] - start_step
    rate = done / max(now - start, 1e-9)
    eta = fmt_seconds((cfg.steps - record["step"]) / rate) if rate > 0 else "?"
    log.info(
        "step %d/%d loss %.4f acc %.3f %s lr %.3g | %.1f seq/s %.0f tok/s "
        "| step %.3fs (data %.3f fwd %.3f bwd %.3f opt %.3f) | mem %.0f MiB | ETA %s",
        record["step"],
        cfg.steps,
        record["loss"],
        record["accuracy"],
        " ".join(f"{k} {record[k]:.4f}" for k in extra),
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


def start_state(
    trainee: Trainee,
    ckpts: Checkpoints,
    latest: Path | None,
    env: Dist,
    run_dir: Path,
    fresh_seed: int,
) -> tuple[int, DevTracker, dict]:
    """Resume from `latest` or start fresh: (step, dev tracker, this rank's saved state).

    A fresh start seeds each rank's dropout stream; a resume restores it. The metrics
    log is cut back to the step training continues from."""
    tracker = DevTracker()
    mine: dict = {}
    step = 0
    if latest is not None:
        step, shared, mine = restore(trainee, ckpts, latest, env)
        tracker = DevTracker(**shared.get("dev", {}))
    else:
        torch.manual_seed(fresh_seed + 1000 * (env.rank + 1))  # per-rank dropout streams
    if env.is_main:
        truncate_metrics(run_dir / METRICS_FILE, step)
    return step, tracker, mine
