"""One pre-training experiment as a typed, validated record (config `pretraining.<name>`).

Defaults are the English Contriever run as it actually ran (spec §5.4, paper A.1):
BERT-base-uncased, Wikipedia + CCNet mixed 50/50 per example, 256-token chunks, crops
of 5-50% plus token deletion p = 0.1, MoCo with K = 131072, m = 0.9995, τ = 0.05,
AdamW 5e-5 (0.9, 0.98, 1e-6, wd 0.01), 20k warmup then linear decay to 0 at 500k
steps, 64 sequences per GPU on 32 GPUs, fp32. Every key is checked, so a misspelt
option is an error naming it (the authors' `--moco_queue` was silently ignored,
spec §15 row 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..models.spec import POOLINGS
from .augment import AUGMENTATIONS, METHODS
from .contrastive import check_queue
from .optim import SCHEDULES

OBJECTIVES = ("moco", "inbatch")
# fp32: strict (the reference). tf32: fp32 weights and activations with TF32 matmuls on
# CUDA (8x the fp32 peak of an A100; the same as fp32 on a CPU). bf16/fp16: autocast.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


# Keys that do not change the trained weights: left out of a run's identity, so a run
# can be resumed with another log cadence, checkpoint cadence or on other hardware.
BOOKKEEPING = frozenset(
    {
        "name",
        "num_workers",
        "max_restarts",
        "log_every",
        "checkpoint_every",
        "keep_every",
        "keep_last",
        "nodes",
        "gpus_per_node",
        "device",
        "flush_denormal",
        "pad_multiple",
        "compile",
        "compile_mode",
        "key_encoder_half_weights",
        "unpadded",
    }
)
# torch.compile modes of inductor (torch._inductor.list_mode_options), and those of them
# that capture CUDA graphs: a run in one of those marks each forward as a new step.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class TrainingRun:
    """What every training experiment has (engine.TrainingConfig): the encoder's pooling
    and similarity, the optimisation, the launch shape and the bookkeeping. Defaults are
    the English Contriever pre-training; FinetuneConfig overrides its own."""

    name: str
    # model and objective
    pooling: str = "mean"
    norm_query: bool = False
    norm_doc: bool = False
    temperature: float = 0.05
    label_smoothing: float = 0.0
    # optimisation
    steps: int = 500000
    warmup_steps: int = 20000
    schedule: str = "linear"
    lr: float = 5e-5
    lr_min_ratio: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.01
    decay_norm_and_bias: bool = True
    max_grad_norm: float | None = None
    batch_size_per_device: int = 64
    grad_accumulation: int = 1
    precision: str = "fp32"
    seed: int = 0
    # launch (the workflow turns these into torchrun arguments and SLURM resources)
    device: str = "cuda"
    nodes: int = 4
    gpus_per_node: int = 8
    num_workers: int = 5
    max_restarts: int = 20
    # CPU only: flush subnormal floats to zero (loop.flush_denormals). fp32 backward
    # through MoCo's softmax at τ = 0.05 makes subnormals, which x86 cores compute on a
    # slow path: backward 6.7x, a whole MiniLM step 2.7x slower on a Xeon; on an EPYC
    # no slower beyond noise (bench/bench_pretrain.py, docs/speed.md).
    # GPUs flush anyway; values under 1.2e-38 cannot change a trained encoder.
    flush_denormal: bool = True
    # Batches are padded to a multiple of this many tokens (training.augment.pad_batch):
    # full tensor-core tiles and a few repeating shapes on a GPU. Padding is masked, so
    # only float rounding and the draws of dropout masks (made per padded shape) change;
    # a run may resume with another value.
    pad_multiple: int = 8
    # torch.compile backend for the encoders' forward (engine.compile_encoders): null
    # (eager) or e.g. "inductor". Compiled kernels change only float rounding.
    compile: str | None = None
    # with compile: inductor, its mode (COMPILE_MODES): "reduce-overhead" replays each
    # padded width's kernels as one CUDA graph (a few widths with pad_multiple 32), for
    # steps bound by kernel launches; null is inductor's default.
    compile_mode: str | None = None
    # Run the encoders on the batch's real tokens only (models/packing.py): pre-training's
    # crops leave ~45% of a padded batch padding. Float rounding and dropout draws change,
    # nothing else; a run may resume with another value. BERT-type models, not with compile.
    unpadded: bool = False
    # bookkeeping
    log_every: int = 100
    checkpoint_every: int = 500
    keep_every: int = 50000
    keep_last: int = 2

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def global_batch(self, world_size: int | None = None) -> int:
        """Sequences per optimiser step over all ranks and accumulation steps."""
        world = self.world_size if world_size is None else world_size
        return self.batch_size_per_device * world * self.grad_accumulation

    @property
    def cudagraphs(self) -> bool:
        """Whether the compiled encoders replay CUDA graphs (their outputs live until
        the next step is marked)."""
        return self.compile == "cudagraphs" or self.compile_mode in CUDAGRAPH_MODES

    def training_dict(self) -> dict:
        """Everything that changes the trained weights: the identity a resume checks
        (BOOKKEEPING, the launch shape and the CPU denormal mode are left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in BOOKKEEPING}


@dataclass(frozen=True)
class PretrainConfig(TrainingRun):
    # what to train from and on (resolved to folders by the workflow)
    init: str = "bert-base-uncased"
    tokenizer: str = "bert-base-uncased"
    sources: tuple[str, ...] = ("wiki-en", "ccnet-en")
    # data
    sampling_coefficient: float = 0.0
    respect_doc_boundaries: bool = False
    min_doc_tokens: int = 32
    chunk_length: int = 256
    # views
    view_method: str = "crop"
    ratio_min: float = 0.05
    ratio_max: float = 0.5
    augmentation: str = "delete"
    augmentation_prob: float = 0.1
    ict_keep_prob: float = 0.0
    # objective (pooling, τ and the rest: TrainingRun)
    objective: str = "moco"
    queue_size: int = 131072
    momentum: float = 0.9995
    key_encoder_train_mode: bool = True
    # Under bf16/fp16 autocast the key encoder runs on half copies of its Linear weights
    # (contrastive.HalfLinearWeights): bitwise the same keys, without autocast's per-layer
    # weight casts. The fp32 weights stay the momentum update's master.
    key_encoder_half_weights: bool = True

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any] | None) -> PretrainConfig:
        """Build from the config mapping; any unknown key or bad value names its key."""
        return _from_mapping(cls, "pretraining", name, spec)

    def validate(self) -> None:
        where = f"pretraining.{self.name}"

        def bad(key: str, why: str) -> InputError:
            return InputError(f"{where}.{key}: {why} (got {getattr(self, key)!r})")

        choices = {
            "objective": OBJECTIVES,
            "view_method": METHODS,
            "augmentation": AUGMENTATIONS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"must be one of {list(allowed)}")
        _check_common(
            self,
            where,
            positive=("chunk_length", "queue_size"),
            unit=("momentum", "augmentation_prob"),
        )
        if not 0.0 < self.ratio_min <= self.ratio_max <= 1.0:
            raise bad("ratio_min", "need 0 < ratio_min <= ratio_max <= 1")
        if self.chunk_length < 4:
            raise bad("chunk_length", "must be >= 4")

    # ------------------------------------------------------------------ derived values

    def check_launch(self, world_size: int) -> None:
        """What must hold before any GPU time is spent for a given number of processes."""
        if self.objective == "moco":
            # The queue is written one micro-batch of all ranks at a time.
            try:
                check_queue(self.queue_size, self.batch_size_per_device * world_size)
            except InputError as err:
                raise InputError(f"pretraining.{self.name}.queue_size: {err}") from None

    def training_dict(self) -> dict:
        out = super().training_dict()
        out["sources"] = list(self.sources)
        return out


OPTIMIZERS = ("asam", "adamw")
PASSAGE_POOLS = ("corpus", "referenced")

# What a fine-tuning run trains (FinetuneConfig.objective).
FINETUNE_OBJECTIVES = ("bi_encoder", "cross_encoder")


@dataclass(frozen=True)
class FinetuneConfig(TrainingRun):
    """One supervised fine-tuning run (config `finetuning.<name>`): in-batch negatives
    plus `n_negatives` extra negatives per query, on a data set's training split.

    Defaults are the paper's MS MARCO phase 1 (appendix A.2): ASAM, lr 1e-5, τ 0.05,
    batch 1024 (64 per GPU on 2 nodes x 8 GPUs), 20k steps, one random negative per
    query. Phase 2 sets `mined_by` (the phase-1 experiment whose model mines the hard
    negatives) and `hard_ratio: 0.1`. Few-shot runs (A.3) set `epochs`, a dev set
    (`dev_split` or `dev_holdout`) and `eval_every`: the model kept is the best on dev.
    Choices the paper leaves open are documented in docs/finetuning.md.

    `data` is one `datasets` key or a list of them: the multilingual recipe (B.2) trains
    on Mr. TyDi's 11 training sets at once (one data set's mined negatives each); ids are
    then namespaced `<data set>/<id>` (finetune.load_training_data).

    `passage_pool` is where random negatives come from. `corpus`: every passage of the
    data sets' collections (the paper's phase 1), all held in memory by every training
    process. `referenced`: only the passages the training records (positives, negatives)
    and the mined negatives name, read row group by row group, so memory follows the
    training set instead of the collection (58M Mr. TyDi passages). Random negatives
    are then passages some training query names, harder and fewer than the corpus's;
    with hard_ratio 1.0 and at least n_negatives mined (or record) negatives per query
    no random negative is ever drawn, and `referenced` trains exactly as `corpus`.
    `referenced` requires named negatives: mined ones (mined_by) or, per data set,
    records whose negative_ids are not all empty (checked when the data is loaded).

    `objective` picks what is trained. `bi_encoder` (the default, the paper's
    retriever): queries and passages encoded apart, scored by dot product / τ.
    `cross_encoder` (a re-ranker; training/cross_encoder.py): `init` loaded as
    AutoModelForSequenceClassification with one label (a new head, initialised from
    `seed`), every query of a rank's batch paired with every passage of that batch's key
    list (its golds, then its negatives), one logit per pair, cross-entropy over each
    query's row with its gold as target and `label_smoothing`. There is no temperature
    (the head learns the scale), no pooling or normalisation (`temperature`, `pooling`,
    `norm_query`, `norm_doc` are not used), no cross-rank gathering (each rank scores its
    own pairs; DDP averages the gradients), and no dev selection (the dev scorer ranks
    with embeddings). A pair is `tokenizer(query, passage, truncation="only_second",
    max_length=max_query_length + max_passage_length)` (models/cross_encoder.py).
    """

    # what to train from and on (resolved to folders by the workflow)
    init: str = "workflow:contriever"
    objective: str = "bi_encoder"  # or "cross_encoder" (see the class docstring)
    data: str | tuple[str, ...] = "msmarco"  # `datasets` key(s) with a training split
    train_split: str = "train"
    # negatives
    n_negatives: int = 1
    hard_ratio: float = 0.0
    mined_by: str | None = None  # phase-1 experiment that mines the hard negatives
    mining_depth: int = 100
    mining_rank_min: int = 10
    mining_rank_max: int = 100
    mining_per_query: int | None = None  # None: every hit in the rank range
    passage_pool: str = "corpus"  # random negatives from: corpus | referenced
    # dev selection (few-shot)
    dev_split: str | None = None
    dev_holdout: float = 0.0  # share of the training queries held out as dev
    eval_every: int = 100
    eval_metric: str = "ndcg@10"
    patience: int | None = None  # evaluations without improvement before stopping
    epochs: int | None = None  # set: steps = ceil(epochs x training queries / batch)
    # encoder (pooling, τ and the rest: TrainingRun)
    dropout: float = 0.1
    max_query_length: int = 256
    max_passage_length: int = 256
    normalize_text: bool = False
    # optimisation: ASAM around AdamW (asam.py); the defaults that differ from pre-training
    optimizer: str = "asam"
    rho: float = 0.05
    eta: float = 0.01
    steps: int = 20000
    warmup_steps: int = 1000
    lr: float = 1e-5
    # launch and bookkeeping
    nodes: int = 2
    num_workers: int = 4
    checkpoint_every: int = 1000
    keep_every: int = 10000

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any] | None) -> FinetuneConfig:
        """Build from the config mapping; any unknown key or bad value names its key."""
        return _from_mapping(cls, "finetuning", name, spec)

    def validate(self) -> None:
        where = f"finetuning.{self.name}"

        def bad(key: str, why: str) -> InputError:
            return InputError(f"{where}.{key}: {why} (got {getattr(self, key)!r})")

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {list(OPTIMIZERS)}")
        if self.passage_pool not in PASSAGE_POOLS:
            raise bad("passage_pool", f"must be one of {list(PASSAGE_POOLS)}")
        names = self.datasets
        if not names or not all(isinstance(d, str) and d for d in names):
            raise bad("data", "must be a data set name or a non-empty list of names")
        if len(set(names)) != len(names):
            dup = next(d for d in names if names.count(d) > 1)
            raise bad("data", f"data set {dup!r} is listed twice")
        if self.objective not in FINETUNE_OBJECTIVES:
            raise bad("objective", f"must be one of {list(FINETUNE_OBJECTIVES)}")
        _check_common(
            self,
            where,
            positive=(
                "max_query_length",
                "max_passage_length",
                "eval_every",
                "mining_depth",
                "mining_rank_min",
                "mining_rank_max",
            ),
            unit=("hard_ratio", "dropout", "dev_holdout"),
        )
        for key in ("n_negatives",):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        for key in ("epochs", "patience", "mining_per_query"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise bad(key, "must be >= 1 or null")
        if self.optimizer == "asam":
            if self.rho <= 0:
                raise bad("rho", "must be > 0")
            if self.eta < 0:
                raise bad("eta", "must be >= 0")
            if self.precision == "fp16":
                raise bad("precision", "ASAM needs unscaled gradients: use bf16 or fp32")
        if self.hard_ratio > 0 and self.mined_by is None:
            raise bad("hard_ratio", "hard negatives need `mined_by` (the phase-1 experiment)")
        if self.mined_by is not None and self.n_negatives < 1:
            raise bad("n_negatives", "mined negatives need at least one negative per query")
        if not self.mining_rank_min <= self.mining_rank_max <= self.mining_depth:
            raise bad(
                "mining_rank_min",
                f"need mining_rank_min <= mining_rank_max ({self.mining_rank_max}) <= "
                f"mining_depth ({self.mining_depth})",
            )
        if self.dev_split is not None and self.dev_holdout > 0:
            raise bad("dev_holdout", "give either dev_split or dev_holdout, not both")
        if self.dev_holdout >= 1:
            raise bad("dev_holdout", "must be < 1")
        if self.patience is not None and not self.has_dev:
            raise bad("patience", "early stopping needs a dev set (dev_split or dev_holdout)")
        if self.has_dev and len(names) > 1:
            raise bad("data", "a dev set (dev_split, dev_holdout) needs a single data set")
        if self.objective == "cross_encoder" and self.unpadded:
            raise bad("unpadded", "packs a bi-encoder's texts; a cross_encoder run pads its pairs")
        if self.objective == "cross_encoder" and self.has_dev:
            key = "dev_split" if self.dev_split is not None else "dev_holdout"
            raise bad(
                key,
                "a cross_encoder run has no dev selection (the dev scorer ranks with a "
                "bi-encoder's embeddings); remove the dev set and set `steps` or `epochs`",
            )

    # ------------------------------------------------------------------ derived values

    @property
    def has_dev(self) -> bool:
        return self.dev_split is not None or self.dev_holdout > 0

    @property
    def datasets(self) -> tuple[str, ...]:
        """The `datasets` keys trained on, in the order their tables are passed."""
        return (self.data,) if isinstance(self.data, str) else tuple(self.data)

    def training_dict(self) -> dict:
        """As TrainingRun's; a list of data sets is a list, and the default passage pool
        and objective are left out so that run folders made before the keys existed
        still resume."""
        out = super().training_dict()
        if not isinstance(self.data, str):
            out["data"] = list(self.data)
        if self.passage_pool == "corpus":
            del out["passage_pool"]
        if out.get("objective") == "bi_encoder":
            del out["objective"]
        return out

    @property
    def cross_encoder(self) -> bool:
        return self.objective == "cross_encoder"

    def mining(self) -> dict:
        """The mining settings (they name the mined file's identity)."""
        return {
            "depth": self.mining_depth,
            "rank_min": self.mining_rank_min,
            "rank_max": self.mining_rank_max,
            "per_query": self.mining_per_query,
            "seed": self.seed,
        }


def _from_mapping(cls, section: str, name: str, spec: Mapping[str, Any] | None):
    """A config dataclass from `<section>.<name>`: unknown keys, wrong types and bad
    values are errors that name the key."""
    spec = dict(spec or {})
    where = f"{section}.{name}"
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "name"}
    unknown = sorted(set(spec) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    if "sources" in spec:
        sources = spec["sources"]
        if isinstance(sources, str) or not isinstance(sources, list | tuple) or not sources:
            raise InputError(f"{where}.sources: expected a non-empty list of corpus names")
        spec["sources"] = tuple(str(s) for s in sources)
    if isinstance(spec.get("data"), list):
        spec["data"] = tuple(spec["data"])
    for key, value in spec.items():
        _check_type(where, key, value, fields[key].type)
    cfg = cls(name=name, **spec)
    cfg.validate()
    return cfg


def _check_common(cfg, where: str, positive: tuple[str, ...], unit: tuple[str, ...]) -> None:
    """Checks every training experiment shares: choices, signs and ranges."""

    def bad(key: str, why: str) -> InputError:
        return InputError(f"{where}.{key}: {why} (got {getattr(cfg, key)!r})")

    choices = {
        "precision": PRECISIONS,
        "schedule": SCHEDULES,
        "pooling": POOLINGS,
        "device": ("cuda", "cpu"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise bad(key, f"must be one of {list(allowed)}")
    common_positive = (
        "steps",
        "batch_size_per_device",
        "grad_accumulation",
        "nodes",
        "gpus_per_node",
        "log_every",
        "checkpoint_every",
        "keep_every",
        "keep_last",
        "pad_multiple",
    )
    for key in common_positive + positive:
        if getattr(cfg, key) < 1:
            raise bad(key, "must be >= 1")
    for key in ("lr", "temperature", "eps"):
        if getattr(cfg, key) <= 0:
            raise bad(key, "must be > 0")
    for key in ("warmup_steps", "num_workers", "max_restarts", "weight_decay", "seed"):
        if getattr(cfg, key) < 0:
            raise bad(key, "must be >= 0")
    for key in ("beta1", "beta2", "lr_min_ratio", "label_smoothing") + unit:
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise bad(key, "must be in [0, 1]")
    if cfg.schedule != "constant" and cfg.warmup_steps >= cfg.steps:
        raise bad("warmup_steps", f"must be smaller than steps ({cfg.steps})")
    if cfg.max_grad_norm is not None and cfg.max_grad_norm <= 0:
        raise bad("max_grad_norm", "must be > 0 or null")
    if cfg.compile_mode is not None:
        if cfg.compile_mode not in COMPILE_MODES:
            raise bad("compile_mode", f"must be one of {list(COMPILE_MODES)} or null")
        if cfg.compile != "inductor":
            raise bad("compile_mode", "is a mode of inductor: it needs compile: inductor")
    if cfg.unpadded and cfg.compile is not None:
        raise bad(
            "unpadded",
            "packs a new number of tokens into every batch, which compiled (static-shape) "
            "encoders would recompile for: set compile: null, or unpadded: false",
        )


def _check_type(where: str, key: str, value: Any, annotation: str) -> None:
    """Type check against the dataclass annotation (strings, via `from __future__`)."""
    optional = "None" in annotation
    if value is None:
        if not optional:
            raise InputError(f"{where}.{key}: must not be null")
        return
    base = annotation.replace(" | None", "")
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "tuple[str, ...]": isinstance(value, tuple),
        "str | tuple[str, ...]": isinstance(value, str | tuple),
    }.get(base, True)
    if not ok:
        raise InputError(f"{where}.{key}: expected {base}, got {type(value).__name__} {value!r}")
