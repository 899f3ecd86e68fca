"""A BERT small enough to build in milliseconds, and a probe of the packed path, for the
tests of the encoder paths."""

from __future__ import annotations

import torch


def tiny_bert(seed: int = 0, dropout: float = 0.0, pooler: bool = False, layers: int = 1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertModel(cfg, add_pooling_layer=pooler)


def record_packed_forwards(monkeypatch) -> list[tuple[int, int]]:
    """The (rows, width) of every batch an Encoder runs packed from now on: a run whose
    `unpadded` key stopped reaching its encoders would record none."""
    from contriever_repro.training import contrastive

    seen, packed = [], contrastive.forward_packed

    def recording(model, input_ids, attention_mask):
        seen.append(tuple(input_ids.shape))
        return packed(model, input_ids, attention_mask)

    monkeypatch.setattr(contrastive, "forward_packed", recording)
    return seen
