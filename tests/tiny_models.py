"""A BERT small enough to build in milliseconds, for the tests of the encoder paths."""

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
