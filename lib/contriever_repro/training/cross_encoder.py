"""Fine-tuning a cross-encoder (re-ranker) on the shared engine (`objective: cross_encoder`).

The data are the bi-encoder's (FinetuneBatches: per query a gold and `n_negatives`
negatives, the same seeds and resume), scored differently. On each rank, with its B
queries and its key list of B·(1+N) passages ([B golds; the N negatives of query 0, of
query 1, ...]), every query is paired with every key:

    pair p = i·B(1+N) + j  is  (query i, key j),   logits.view(B, B(1+N))[i, j]

so each query meets its gold (column i), the other queries' golds and every negative
of the batch, as the in-batch bi-encoder does on one rank. The loss is cross-entropy of
each row with target i (label smoothing as configured); there is no temperature (the
classification head learns the scale) and no cross-rank gathering: a pair must be read
by the model, so other ranks' passages are not scored (DDP averages the gradients).
Logged: loss, accuracy (the gold column scores highest), margin (gold logit minus the
mean of the row's other logits) and score_std (std of the batch's logits; near 0 =
collapse).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from ..data.text import normalize_text as _normalize
from ..errors import InputError
from ..models.attention import from_pretrained
from ..models.cross_encoder import (
    check_cross_encoder_init,
    encode_pairs,
    pair_max_length,
    write_cross_encoder_folder,
)
from .finetune_batches import FinetuneBatches

log = logging.getLogger(__name__)

# What the engine passes to CrossEncoder.forward, from each batch, in this order.
PAIR_INPUTS = ("pair_input_ids", "pair_attention_mask", "pair_token_type_ids", "targets")
PAIR_STATS = ("loss", "accuracy", "margin", "score_std")


class CrossEncoder(nn.Module):
    """A sequence classifier with one label, trained to put each query's gold first
    among the batch's passages (layout in the module docstring)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, token_types: bool = True):
        super().__init__()
        if getattr(model.config, "num_labels", None) != 1:
            raise InputError(f"a cross-encoder has one label, got {model.config.num_labels}")
        self.model = model
        self.label_smoothing = float(label_smoothing)
        self.token_types = token_types  # False for models without segment embeddings

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None
    ) -> torch.Tensor:
        """[P] relevance logits of P tokenised pairs."""
        extra = {"token_type_ids": token_type_ids} if self.token_types else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return out.logits[:, 0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n_q, n_pairs = targets.shape[0], input_ids.shape[0]
        if n_q == 0 or n_pairs % n_q:
            raise InputError(f"{n_pairs} pairs do not make a [{n_q} queries x keys] grid")
        logits = self.scores(input_ids, attention_mask, token_type_ids).view(n_q, -1)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            grid = logits.detach().float()
            gold = grid.gather(1, targets[:, None])[:, 0]
            others = (grid.sum(dim=1) - gold) / max(grid.shape[1] - 1, 1)
            stats = {
                "loss": loss.detach(),
                "accuracy": (grid.argmax(dim=1) == targets).float().mean(),
                "margin": (gold - others).mean(),
                "score_std": grid.std() if grid.numel() > 1 else grid.new_zeros(()),
            }
        return loss, stats


def build_cross_encoder(cfg, init: str | Path) -> CrossEncoder:
    """`init` as AutoModelForSequenceClassification(num_labels=1); a new head (and a
    pooler the folder lacks) is initialised from the current torch seed. Dropout is set
    in every Dropout module, as finetune.build_model does for the bi-encoder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    where = f"finetuning.{cfg.name}"
    max_length = pair_max_length(cfg.max_query_length, cfg.max_passage_length)
    try:
        config = AutoConfig.from_pretrained(str(init))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the initial model {init}: {err}") from None
    check_cross_encoder_init(config, where, max_length)
    try:
        model = from_pretrained(AutoModelForSequenceClassification, str(init), num_labels=1)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load {init} as a cross-encoder: {err}") from None
    model = model.float()
    _fresh_zero_pooler(model)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = cfg.dropout
    return CrossEncoder(
        model,
        label_smoothing=cfg.label_smoothing,
        token_types=getattr(model.config, "type_vocab_size", 0) > 1,
    )


def _fresh_zero_pooler(model: nn.Module) -> None:
    """Initialise a pooler whose weights are all zero, as the usual missing weight is.

    A bi-encoder exported by this workflow stores its unused pooler as zeros
    (models/export.py); the classification head reads the pooler, so kept as zeros
    every pair would score the same and the head would start from a dead end. The draw
    is BERT's (normal, std `initializer_range`; biases 0) from the current torch seed.
    """
    params = {n: p for n, p in model.named_parameters() if ".pooler." in f".{n}"}
    if not params or any(bool(p.detach().any()) for p in params.values()):
        return
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        for p in params.values():
            if p.ndim > 1:
                p.normal_(0.0, std)
    log.info("the init's pooler is all zeros (a bi-encoder export): initialised afresh")


class CrossEncoderBatches(FinetuneBatches):
    """FinetuneBatches (same draws, same resume) as a query x key grid of pairs.

    Each batch: `pair_input_ids`, `pair_attention_mask`, `pair_token_type_ids`
    [B·B(1+N), T] (pair p = query p // B(1+N), key p % B(1+N)), `targets` [B] (the gold
    column of each query: i), and `examples`, `passages`, `n_hard` as the base class.
    """

    def batch(self, b: int) -> dict:
        examples, passages, n_hard = self.draw(b)
        ex = self.examples
        queries = ex.query_texts.take(pa.array(examples)).to_pylist()
        keys = ex.passage_texts.take(pa.array(passages)).to_pylist()
        if self.normalize_text:
            queries, keys = [_normalize(t) for t in queries], [_normalize(t) for t in keys]
        ids, mask, types = encode_pairs(
            self.tokenizer,
            [q for q in queries for _ in keys],
            keys * len(queries),
            pair_max_length(self.max_query_length, self.max_passage_length),
            pad_id=self.pad_id,
        )
        return {
            "index": b,
            "pair_input_ids": ids,
            "pair_attention_mask": mask,
            "pair_token_type_ids": types,
            "targets": torch.arange(len(examples), dtype=torch.long),
            "examples": torch.from_numpy(examples),
            "passages": torch.from_numpy(passages),
            "n_hard": n_hard,
        }


def export_cross_encoder(
    model: nn.Module, tokenizer, out_dir: str | Path, metadata: dict[str, Any]
) -> Path:
    """Write the trained CrossEncoder's classifier as a transformers folder
    (models/cross_encoder.write_cross_encoder_folder)."""
    inner = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    if not isinstance(inner, CrossEncoder):
        raise InputError(f"not a cross-encoder: {type(inner).__name__}")
    return write_cross_encoder_folder(inner.model, tokenizer, out_dir, metadata)
