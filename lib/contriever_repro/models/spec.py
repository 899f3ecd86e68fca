"""A retrieval model is more than a name: every setting that changes its numbers.

`ModelSpec` carries the source (hub id or local folder), pooling, normalisation,
score function, maximum lengths, casing and text normalisation. The defaults are
Contriever's: mean pooling over all non-padding tokens ([CLS] and [SEP] included),
no L2 normalisation, dot product, 512 tokens, "title text" passages.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .attention import from_pretrained

if TYPE_CHECKING:  # torch is imported where it is used: search jobs never need it
    import torch

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
SCORE_FUNCTIONS = ("dot", "cos_sim")
DTYPES = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cuda", "cpu")
# Weights for other frameworks that a hub repository may carry: never needed here.


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    revision: str | None = None
    pooling: str = "mean"
    normalize: bool = False
    score_function: str = "dot"
    max_query_length: int = 512
    max_passage_length: int = 512
    lowercase: bool = False
    normalize_text: bool = False
    use_title: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    dtype: str = "fp32"
    query_dtype: str | None = None
    batch_size: int = 128
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        where = f"model '{self.name}'"
        if self.pooling not in POOLINGS:
            raise InputError(f"{where}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.score_function not in SCORE_FUNCTIONS:
            raise InputError(
                f"{where}: score_function must be one of {SCORE_FUNCTIONS}, "
                f"got {self.score_function!r}"
            )
        for key in ("dtype", "query_dtype"):
            value = getattr(self, key)
            if value is not None and value not in DTYPES:
                raise InputError(f"{where}: {key} must be one of {DTYPES}, got {value!r}")
        for key in ("max_query_length", "max_passage_length", "batch_size"):
            if int(getattr(self, key)) <= 0:
                raise InputError(f"{where}: {key} must be positive")

    @property
    def l2_normalize(self) -> bool:
        """cos_sim is a dot product between unit vectors, so normalise once at encoding."""
        return self.normalize or self.score_function == "cos_sim"

    def dtype_for(self, side: str) -> str:
        """Precision of one side: queries may stay fp32 (they are few and cheap) while
        the corpus, where the time goes, runs in bf16/fp16."""
        if side == "query" and self.query_dtype is not None:
            return self.query_dtype
        return self.dtype

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any], source: str | None = None) -> ModelSpec:
        """Build from a config entry; unknown keys are an error so typos never go unnoticed."""
        known = {f.name for f in dataclasses.fields(cls)} - {"name", "extra"}
        workflow_keys = {"type", "run", "description", "paper", "bm25"}
        unknown = set(cfg) - known - workflow_keys
        if unknown:
            raise InputError(f"models.{name}: unknown key(s) {sorted(unknown)}")
        values = {k: v for k, v in cfg.items() if k in known}
        if source is not None:
            values["source"] = source
        if "source" not in values:
            raise InputError(f"models.{name}: no 'source' (hub id or local folder)")
        return cls(name=name, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def load_encoder(
    spec: ModelSpec,
    device: str | torch.device = "cpu",
    offline: bool = False,
    weights_dtype: str = "fp32",
):
    """Load tokenizer and encoder with `AutoModel`; fail with a message naming the model.

    offline: the source must be a local folder (a prefetched hub snapshot, a folder built
    by the workflow, or the user's own); the hub is never contacted. Cluster jobs load
    this way, since compute nodes often have no internet.

    weights_dtype: on a GPU, `fp16`/`bf16` casts the weights, so inference runs in half
    precision throughout instead of autocast's casts around every matmul (about 1.3x on
    an H200, issue 12); a job that encodes one side in one precision loads this way. On
    CPU, and for fp32, the weights stay fp32 and encode_texts applies autocast, which
    keeps CPU results as they were.
    """
    from transformers import AutoModel, AutoTokenizer

    if weights_dtype not in DTYPES:
        raise InputError(f"weights_dtype must be one of {DTYPES}, got {weights_dtype!r}")
    source = spec.source
    is_local = Path(source).exists()
    if offline and not Path(source).is_dir():
        raise InputError(
            f"model '{spec.name}': {source!r} is not a local folder; encoding jobs load "
            "only local folders (hub models are fetched first by rule prefetch_model)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = from_pretrained(AutoModel, source, local_files_only=offline)
    except (OSError, ValueError) as err:
        hint = (
            "the local folder has no loadable Hugging Face model"
            if is_local
            else "it is neither a local folder nor a model id reachable on the Hugging Face hub "
            "(offline? set HF_HOME to a cache that holds it, or point source at a local copy)"
        )
        raise InputError(f"model '{spec.name}': cannot load {source!r}: {hint}. ({err})") from err
    if hasattr(model, "pooler") and model.pooler is not None:
        # Contriever checkpoints carry no pooler; an untrained one would only waste time.
        model.pooler = None
    model.eval()
    if weights_dtype != "fp32" and str(device).startswith("cuda"):
        model.to(torch_dtype(weights_dtype))
    model.to(device)
    return tokenizer, model


def choose_device(requested: str, gpus: int, cuda_available: bool, what: str = "encode") -> str:
    """The device an encoding (or search: `what`) job runs on, or an InputError before
    any work is done.

    requested: the config's `device` (auto | cuda | cpu); gpus: the GPUs the job was
    given (the rule's resources.gpu). A job given GPUs that sees no CUDA is a
    misconfigured cluster job (wrong partition, no --gpus, broken driver): on CPU it
    would crawl until its time limit, so it fails at once. CPU is used only when the
    config says `cpu`, or says `auto` for a job given no GPU.
    """
    if requested not in DEVICES:
        raise InputError(f"device must be one of {DEVICES}, got {requested!r}")
    if requested == "cpu":
        if gpus > 0:
            log.warning("device: cpu, so the %d GPU(s) this job was given stay unused", gpus)
        return "cpu"
    if cuda_available:
        return "cuda"
    if gpus > 0:
        raise InputError(
            f"this job was given {gpus} GPU(s) (resources gpu={gpus}) but CUDA is not "
            "visible (check the partition, the job's --gpus, CUDA_VISIBLE_DEVICES and, for "
            "search with search_backend: faiss, that FAISS is the GPU build faiss-gpu, or "
            f"set search_backend: torch); refusing to {what} on CPU. "
            f"To {what} on CPU on purpose, set `device: cpu` in the config or give the rule "
            "gpu=0."
        )
    if requested == "cuda":
        raise InputError(f"device: cuda, but CUDA is not visible: cannot {what} on a GPU")
    return "cpu"


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Sentence embedding from token states.

    mean: average over positions with attention_mask == 1, special tokens included,
    exactly as Contriever; cls: the first token's state.
    """
    if method == "cls":
        return last_hidden[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
        summed = (last_hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1.0)
        return summed / counts
    raise InputError(f"unknown pooling {method!r}; expected one of {POOLINGS}")
