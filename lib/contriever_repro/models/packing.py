"""Run a Hugging Face encoder on packed sequences: no layer computes on padding.

A padded batch of B rows of width L runs every projection and feed-forward layer on
B x L tokens. Pre-training's random crops leave about 45% of them padding (views of
64.9 real tokens padded to 117.1 on average, docs/speed.md), and fine-tuning pads short
queries and passages alike. Packing puts the T real tokens in one row, so the embeddings,
projections and feed-forward layers, nearly all of the FLOPs, run on T tokens. Attention
alone goes back to the padded B x L layout through an index, with a key mask, because
SDPA's kernels on every device take padded batches; its cost is small at these widths.

The outputs equal the padded forward's up to float rounding, gradients included
(tests/test_packing.py). Dropout draws differ, since its masks are drawn per shape.
Packing reads the token count from the mask, one host sync per forward on a GPU. The
padded forward makes one too (transformers asks whether the mask has any padding before
building its SDPA mask), and packing skips it, so the cost is the extra index kernels,
which matter where a step is bound by kernel launches rather than FLOPs
(bench/bench_gpu.py measures both).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError

PACKED_ATTENTION = "contriever_packed_sdpa"
# Model types whose padded forward numbers positions by column (0 .. L-1), so that a
# packed token keeps its position by keeping its column. RoBERTa-style models count
# positions from the padding index instead, and are refused rather than guessed at.
PACKABLE_MODEL_TYPES = ("bert",)


@dataclass(frozen=True)
class Packing:
    """Where the packed tokens of a (rows x width) padded batch came from."""

    rows: int
    width: int
    index: torch.Tensor  # (T,) flat padded position (row * width + column) of each token
    key_mask: torch.Tensor  # (rows, 1, 1, width) bool: True for a real token


def check_packable(model: nn.Module, where: str) -> None:
    """Refuse, naming the config key, a model that packing would change: one that
    numbers positions otherwise, or whose attention layers do not look their function
    up in transformers' attention interface (older transformers: the packed row would
    attend across sequences). The second is checked by running a two-row probe."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        raise InputError(
            f"{where}: unpadded (packed) sequences need a model that numbers positions by "
            f"column, one of {list(PACKABLE_MODEL_TYPES)}; this model is {model_type!r}. "
            "Set unpadded: false"
        )
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers before 5.x
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        # The recomputation runs after the packed call has switched attention back to
        # plain SDPA, which would attend across the packed sequences.
        raise InputError(
            f"{where}: unpadded (packed) sequences cannot be combined with gradient "
            "checkpointing. Set unpadded: false"
        )
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        raise InputError(
            f"{where}: unpadded (packed) sequences run through SDPA attention; this model "
            f"was loaded with {model.config._attn_implementation!r}"
        )
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = (ids > 0).long()
    keep = mask.bool()
    device = next(model.parameters()).device
    training = model.training
    model.eval()  # no dropout: the two forwards must agree to float rounding
    try:
        with torch.no_grad():
            ids, mask = ids.to(device), mask.to(device)
            want = model(input_ids=ids, attention_mask=mask).last_hidden_state[keep]
            got = forward_packed(model, ids, mask)[keep]
        error = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    except (ImportError, TypeError, RuntimeError) as err:
        error, why = float("inf"), f"{type(err).__name__}: {err}"
    else:
        why = f"packed and padded states differ by {error:.2g} (relative)"
    finally:
        model.train(training)
    if not error <= 1e-4:
        import transformers

        raise InputError(
            f"{where}: this model's packed forward is not its padded one ({why}) under "
            f"transformers {transformers.__version__}, whose attention layers must look "
            "up their function in transformers.AttentionInterface (transformers 5 does). "
            "Upgrade transformers or set unpadded: false"
        )


def pack(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, Packing]:
    """(ids (1, T), positions (1, T), Packing) of a padded batch; either padding side."""
    keep = attention_mask.bool()
    rows, width = keep.shape
    index = keep.flatten().nonzero().squeeze(1)  # the one host sync: T is data-dependent
    packing = Packing(rows=rows, width=width, index=index, key_mask=keep[:, None, None, :])
    ids = input_ids.flatten().index_select(0, index).unsqueeze(0)
    return ids, (index % width).unsqueeze(0), packing


def unpack(packed: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(T, ...) packed values -> (rows, width, ...), zeros at padding. Every index is
    written once, so the copy and its gradient are deterministic on every device."""
    padded = packed.new_zeros(packing.rows * packing.width, *packed.shape[1:])
    padded = padded.index_copy(0, packing.index, packed)
    return padded.view(packing.rows, packing.width, *packed.shape[1:])


def packed_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    packing: Packing | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention-function interface over packed states: attention runs
    padded, through transformers' own SDPA function, and comes back packed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packing is None:
        raise RuntimeError(
            f"{PACKED_ATTENTION} runs only inside models.packing.forward_packed, which "
            "passes the packing of its batch"
        )

    def padded(x: torch.Tensor) -> torch.Tensor:  # (1, heads, T, dim) -> (rows, heads, width, dim)
        return unpack(x[0].transpose(0, 1), packing).transpose(1, 2)

    out, _ = sdpa_attention_forward(
        module, padded(query), padded(key), padded(value), packing.key_mask, **kwargs
    )  # (rows, width, heads, dim)
    rows, width, heads, dim = out.shape
    return out.reshape(rows * width, heads, dim).index_select(0, packing.index).unsqueeze(0), None


def register_packed_attention() -> None:
    """Make PACKED_ATTENTION a name transformers' attention layers can look up. No
    attention-mask function is registered with it: the models then build no mask (the
    packing carries it) and, above all, no T x T mask for the packed row."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)


@contextmanager
def packed_attention(model: nn.Module) -> Iterator[None]:
    """Route the model's attention through PACKED_ATTENTION for one call; the model
    stays on SDPA for everything else (evaluation, export)."""
    register_packed_attention()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def forward_packed(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(rows, width, hidden) last hidden states of a padded batch, as the model's own
    forward gives them but computed on the real tokens only; zeros at padding, which
    pooling (spec.pool) masks out as it does the padded forward's states."""
    ids, positions, packing = pack(input_ids, attention_mask)
    with packed_attention(model):
        out = model(input_ids=ids, position_ids=positions, packing=packing)
    return unpack(out.last_hidden_state[0], packing)
