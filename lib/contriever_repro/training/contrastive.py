"""Contrastive objectives of Contriever: MoCo with a key queue, and in-batch negatives.

Both follow the paper's §3 and the reference code's behaviour (spec §5-6), with the
reference's bugs fixed (spec §15):

* the loss is cross-entropy over [positive, negatives] / τ (paper Eq. 1 forgets the −log);
* the MoCo key encoder can really be put in eval mode (the reference flag was a no-op);
* a queue size that is not a multiple of the global batch is refused with a message
  before any encoder runs (the reference only asserted after the first forward);
* `export_query_encoder` strips only a leading prefix and checks every key against a
  plain Hugging Face model (the reference's substring replace plus strict=False silently
  left transformer layers at random initialisation).

Embeddings are pooled token states with no projection head, as in Contriever.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.packing import check_packable, forward_packed
from ..models.spec import POOLINGS, pool

Stats = dict[str, torch.Tensor]

MOCO_PREFIX = "encoder_q.model."
INBATCH_PREFIX = "encoder.model."
ENCODER_PREFIX = "model."
DDP_PREFIX = "module."


class Encoder(nn.Module):
    """A Hugging Face encoder plus pooling: the whole retriever, no projection head.

    A pooler layer, if the model has one, is removed: pooled embeddings never use it, so it
    would get no gradient (DDP with find_unused_parameters=False fails on that) and its keys
    would not load into the `add_pooling_layer=False` model that evaluation builds.

    `unpadded` runs the model on the batch's real tokens only (models/packing.py), after
    checking that the model allows it; a refusal names `unpadded_key`, the config key.
    """

    def __init__(
        self,
        model: nn.Module,
        pooling: str = "mean",
        normalize: bool = False,
        unpadded: bool = False,
        unpadded_key: str = "unpadded",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise InputError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.unpadded = unpadded
        if unpadded:
            check_packable(model, unpadded_key)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        normalize: bool | None = None,
    ) -> torch.Tensor:
        """[B, T] token ids → [B, dim] embeddings; `normalize` overrides the default."""
        if self.unpadded:
            hidden = forward_packed(self.model, input_ids, attention_mask)
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)
            hidden = hidden.last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling)
        if self.normalize if normalize is None else normalize:
            emb = F.normalize(emb, dim=-1)
        return emb


def info_nce(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """InfoNCE = mean cross-entropy of the (already temperature-scaled) scores."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def check_queue(queue_size: int, global_batch: int) -> None:
    """Refuse a queue that the global batch does not tile exactly.

    Enqueueing writes whole global batches at the pointer; with K % batch != 0 the last
    write would run past the end of the queue. Call this before training starts.
    """
    if queue_size <= 0 or global_batch <= 0:
        raise InputError(
            f"MoCo queue size ({queue_size}) and global batch size ({global_batch}) "
            "must both be positive"
        )
    if queue_size % global_batch:
        raise InputError(
            f"MoCo queue size {queue_size} is not a multiple of the global batch size "
            f"{global_batch} (per-rank batch × world size); choose e.g. "
            f"{max(1, queue_size // global_batch) * global_batch}"
        )


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks in rank order (no gradient); identity on one process."""
    _, world = dist_info()
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and keeps this rank's slice.

    Rank r's loss depends on all ranks' keys; summing the incoming gradients gives this
    rank's keys the gradient of the sum of all ranks' losses, so DDP's mean over ranks
    yields the exact gradient of the mean loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = dist_info()
        ctx.rank, ctx.rows = rank, x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks in rank order, differentiably; identity on one process.

    Every rank must pass the same shape (all_gather cannot handle ragged batches).
    """
    _, world = dist_info()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


def _batch_std(emb: torch.Tensor) -> torch.Tensor:
    """Std over the batch of each dimension, averaged over dimensions: near 0 = collapse."""
    return emb.detach().float().std(dim=0).mean()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on `device`'s type, or None where it is off."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class HalfLinearWeights:
    """Half-precision copies of a frozen module's nn.Linear weights and biases, for
    forwards under autocast.

    Autocast casts a Linear's fp32 weight and bias to half on every call, and a frozen
    parameter's cast is not cached: two kernels per layer per forward (144 for a
    BERT-base). These copies are what those casts would give, refreshed by one foreach
    copy per forward, so a forward that swaps them in computes exactly what autocast
    over the fp32 weights computes. The fp32 weights stay the master: MoCo's momentum
    update, 0.0005 of a difference, is below bf16's resolution. Only parameters that
    belong to one Linear are copied (a weight tied to an embedding is left alone).
    """

    def __init__(self, module: nn.Module):
        owners: dict[int, int] = {}
        for _, p in module.named_parameters(remove_duplicate=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
        self.module = module
        self.names = [
            f"{prefix}.{name}" if prefix else name
            for prefix, sub in module.named_modules()
            if isinstance(sub, nn.Linear)
            for name, p in sub.named_parameters(recurse=False)
            if owners[id(p)] == 1
        ]
        self.sources: list[torch.Tensor] = []
        self.copies: list[torch.Tensor] = []

    @torch.no_grad()
    def refreshed(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """name → half copy, equal to the current fp32 weights cast to `dtype`."""
        if not self.names:
            return {}
        # Re-read the parameters if the module was given new ones (a conversion that
        # replaces them); then re-allocate on a new device or dtype.
        if not self.sources or self.module.get_parameter(self.names[0]) is not self.sources[0]:
            self.sources = [self.module.get_parameter(n) for n in self.names]
            self.copies = []
        first = self.copies[0] if self.copies else None
        if first is None or first.dtype != dtype or first.device != self.sources[0].device:
            self.copies = [torch.empty_like(p, dtype=dtype) for p in self.sources]
        torch._foreach_copy_(self.copies, self.sources)
        return dict(zip(self.names, self.copies, strict=True))


class MoCo(nn.Module):
    """MoCo pre-training: query encoder trained, momentum key encoder, queue of past keys.

    Defaults are the English Contriever run (queue 131072, m 0.9995, τ 0.05; spec §5.4).
    Only the queue supplies negatives (the step's other keys do not), and the loss is
    one-directional, query → key, as in the reference. Under autocast the key encoder
    runs on half copies of its Linear weights (HalfLinearWeights: the same keys, fewer
    kernels) unless `key_half_weights` is off.
    """

    def __init__(
        self,
        encoder: Encoder,
        queue_size: int = 131072,
        momentum: float = 0.9995,
        temperature: float = 0.05,
        norm_query: bool = False,
        norm_doc: bool = False,
        label_smoothing: float = 0.0,
        key_encoder_train_mode: bool = True,
        global_batch: int | None = None,
        key_half_weights: bool = True,
    ):
        super().__init__()
        if queue_size <= 0:
            raise InputError(f"MoCo queue size must be positive, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise InputError(f"MoCo momentum must be in [0, 1], got {momentum}")
        if temperature <= 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        if global_batch is not None:
            check_queue(queue_size, global_batch)
        self.queue_size = int(queue_size)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.norm_query = norm_query
        self.norm_doc = norm_doc
        self.label_smoothing = float(label_smoothing)
        self.key_encoder_train_mode = key_encoder_train_mode

        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        # A plain attribute: the copies are neither parameters nor checkpointed.
        self.key_half_weights = HalfLinearWeights(self.encoder_k) if key_half_weights else None

        queue = F.normalize(torch.randn(encoder.dim, self.queue_size), dim=0)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.train(self.training)

    def train(self, mode: bool = True) -> MoCo:
        """Train mode for the module; the key encoder follows unless told to stay in eval."""
        super().train(mode)
        self.encoder_k.train(mode and self.key_encoder_train_mode)
        return self

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_k ← m·θ_k + (1−m)·θ_q for every parameter pair; buffers are left alone."""
        k_params = list(self.encoder_k.parameters())
        q_params = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(k_params, self.momentum)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def encode_keys(self, k_ids: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
        """The key encoder's embeddings; under autocast through its half Linear weights."""
        dtype = autocast_dtype(k_ids.device)
        if self.key_half_weights is None or dtype is None:
            return self.encoder_k(k_ids, k_mask, normalize=self.norm_doc)
        return torch.func.functional_call(
            self.encoder_k,
            self.key_half_weights.refreshed(dtype),
            (k_ids, k_mask),
            {"normalize": self.norm_doc},
            tie_weights=False,
            strict=False,
        )

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of all ranks (rank order) at the pointer and advance it mod K."""
        keys = gather_nograd(keys)
        batch = keys.shape[0]
        check_queue(self.queue_size, batch)
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + batch] = keys.T.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + batch) % self.queue_size)

    def forward(
        self,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        k_ids: torch.Tensor,
        k_mask: torch.Tensor,
        update: bool = True,
        momentum_step: bool = True,
    ) -> tuple[torch.Tensor, Stats]:
        """One training step's loss; `update=False` leaves key encoder and queue untouched
        (for a validation loss). With gradient accumulation, pass `momentum_step=False`
        for all but the first micro-batch of an optimiser step: θ_q has not changed since,
        so a second EMA step would only pull θ_k further towards the same θ_q."""
        if q_ids.shape[0] != k_ids.shape[0]:
            raise InputError(
                f"MoCo needs one key view per query view, got {q_ids.shape[0]} queries "
                f"and {k_ids.shape[0]} keys"
            )
        _, world = dist_info()
        check_queue(self.queue_size, q_ids.shape[0] * world)
        # Re-assert the key encoder's mode: a wrapper may have toggled it directly.
        self.encoder_k.train(self.training and self.key_encoder_train_mode)

        q = self.encoder_q(q_ids, q_mask, normalize=self.norm_query)
        with torch.no_grad():
            if update and momentum_step:
                self.momentum_update()
            k = self.encode_keys(k_ids, k_mask)

        l_pos = (q * k).sum(dim=-1, keepdim=True)
        l_neg = q @ self.queue.clone().detach().to(q.dtype)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = info_nce(logits, targets, self.label_smoothing)

        if update:
            self.enqueue(k)
        stats = {
            "loss": loss.detach(),
            "accuracy": (logits.detach().argmax(dim=-1) == 0).float().mean(),
            "stdq": _batch_std(q),
            "stdk": _batch_std(k),
        }
        return loss, stats


class InBatch(nn.Module):
    """In-batch negatives: one encoder, gradients through queries and keys.

    Key layout. Each rank passes keys = [its B golds; its N extra negatives] (N ≥ 0, the
    same on every rank; gold i belongs to query i). After the gather the score columns are
    [rank 0: golds, negatives | rank 1: golds, negatives | ...], so the target of local
    query i on rank r is r·(B + N) + i: every block starts with that rank's golds. All
    golds and negatives of all ranks are negatives for every query; queries are not.
    """

    def __init__(
        self,
        encoder: Encoder,
        temperature: float = 0.05,
        norm_query: bool = False,
        norm_doc: bool = False,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if temperature <= 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        self.encoder = encoder
        self.temperature = float(temperature)
        self.norm_query = norm_query
        self.norm_doc = norm_doc
        self.label_smoothing = float(label_smoothing)

    def forward(
        self,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        k_ids: torch.Tensor,
        k_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, Stats]:
        """Loss of local queries against the gathered keys of all ranks (layout above)."""
        n_q, n_k = q_ids.shape[0], k_ids.shape[0]
        if n_k < n_q:
            raise InputError(
                f"in-batch keys must start with one gold per query: got {n_q} queries "
                f"but only {n_k} keys"
            )
        rank, _ = dist_info()
        q = self.encoder(q_ids, q_mask, normalize=self.norm_query)
        k = self.encoder(k_ids, k_mask, normalize=self.norm_doc)
        all_k = gather_with_grad(k)

        logits = (q / self.temperature) @ all_k.T
        targets = rank * n_k + torch.arange(n_q, device=q.device)
        loss = info_nce(logits, targets, self.label_smoothing)
        stats = {
            "loss": loss.detach(),
            "accuracy": (logits.detach().argmax(dim=-1) == targets).float().mean(),
            "stdq": _batch_std(q),
            "stdk": _batch_std(k),
        }
        return loss, stats


def _plain_reference(config) -> nn.Module:
    """The bare HF model evaluation loads into, built on the meta device (no memory)."""
    from transformers import AutoModel

    with torch.device("meta"):
        try:
            return AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option
            return AutoModel.from_config(config)


def _hf_model(module: nn.Module) -> nn.Module:
    """The HF model holding the query encoder's weights, through a DDP wrapper if any."""
    inner = module.module if isinstance(getattr(module, "module", None), nn.Module) else module
    if isinstance(inner, MoCo):
        return inner.encoder_q.model
    if isinstance(inner, InBatch):
        return inner.encoder.model
    if isinstance(inner, Encoder):
        return inner.model
    return inner


def _split_prefix(keys: list[str]) -> tuple[str, tuple[str, ...]]:
    """(prefix of the query encoder's weights, prefixes of keys that are expected extras)."""
    if any(k.startswith("encoder_q.") for k in keys):
        return MOCO_PREFIX, ("encoder_k.", "queue", "queue_ptr")
    if any(k.startswith(INBATCH_PREFIX) for k in keys):
        return INBATCH_PREFIX, ()
    if any(k.startswith(ENCODER_PREFIX) for k in keys):
        return ENCODER_PREFIX, ()
    return "", ()


def _list(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:20])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def export_query_encoder(
    source: nn.Module | Mapping[str, torch.Tensor],
    reference: nn.Module | object | None = None,
) -> dict[str, torch.Tensor]:
    """State dict of the query encoder, keyed exactly as a plain HF model (no pooler).

    `source` is a MoCo, InBatch or Encoder (DDP-wrapped or not) or one of their state
    dicts, or a bare HF state dict. Only a *leading* prefix is stripped (`module.`, then
    `encoder_q.model.` / `encoder.model.` / `model.`). The result is checked against
    `reference` (a model, or an HF config to build one; by default the config of the
    source's own HF model): any missing, unexpected or mis-shaped key raises InputError,
    so a checkpoint can never load as silently random weights.
    """
    config = None
    if isinstance(source, nn.Module):
        config = getattr(_hf_model(source), "config", None)
        state = source.state_dict()
    elif isinstance(source, Mapping):
        state = dict(source)
    else:
        raise InputError(f"cannot export a query encoder from a {type(source).__name__}")

    if reference is None:
        if config is None:
            raise InputError(
                "export_query_encoder: give `reference` (an HF model or config) to check a "
                "bare state dict against"
            )
        reference = config
    if not isinstance(reference, nn.Module):
        reference = _plain_reference(reference)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}

    keys = list(state)
    if keys and all(k.startswith(DDP_PREFIX) for k in keys):
        state = {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
        keys = list(state)
    prefix, extras = _split_prefix(keys)
    out: dict[str, torch.Tensor] = {}
    stray = []
    for key, value in state.items():
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value
        elif not any(key.startswith(e) if e.endswith(".") else key == e for e in extras):
            stray.append(key)

    missing = set(expected) - set(out)
    unexpected = (set(out) - set(expected)) | {f"(outside {prefix!r}) {k}" for k in stray}
    shapes = [
        f"{k}: {tuple(out[k].shape)} vs {expected[k]}"
        for k in sorted(set(out) & set(expected))
        if tuple(out[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:20])}")
        raise InputError(
            f"query encoder weights (prefix {prefix!r}) do not match a plain "
            f"{type(reference).__name__}: " + " | ".join(parts)
        )
    return {k: v.detach().clone() for k, v in out.items()}
