"""A cross-encoder (re-ranker) as this workflow tokenises, exports and loads it.

A cross-encoder reads a query and a passage together and gives one relevance logit: a
Hugging Face `AutoModelForSequenceClassification` with `num_labels=1`. Training
(training/cross_encoder.py) and re-ranking tokenise a pair the same way, with
`encode_pairs`; the exported folder is a plain transformers folder (config, safetensors
weights, tokenizer) that `AutoModelForSequenceClassification.from_pretrained` and
`AutoTokenizer.from_pretrained` load as it is, plus this workflow's record of how it was
trained (`pretraining.json`, as every exported model has) and a model card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_dir
from .export import CARD_FILE, METADATA_FILE


def pair_max_length(max_query_length: int, max_passage_length: int) -> int:
    """Tokens of one (query, passage) pair, special tokens included: the two budgets of
    the bi-encoder together."""
    return int(max_query_length) + int(max_passage_length)


def encode_pairs(
    tokenizer,
    queries: Sequence[str],
    passages: Sequence[str],
    max_length: int,
    pad_id: int | None = None,
):
    """(input_ids, attention_mask, token_type_ids) [P, T] of the pairs (queries[p],
    passages[p]), right-padded to the longest pair (token types padded with 0).

    Each pair is `tokenizer(query, passage, truncation="only_second",
    max_length=max_length)`: the passage is cut, the query kept whole. A query so long
    that even an empty passage would not fit is the one exception: its pairs are cut
    "longest_first" (where only_second would fail), so no text stops a run.
    """
    import torch

    if len(queries) != len(passages):
        raise InputError(f"{len(queries)} queries but {len(passages)} passages to pair")
    if not queries:
        raise InputError("no (query, passage) pair to encode")
    pad = tokenizer.pad_token_id if pad_id is None else pad_id
    if pad is None:
        raise InputError("the tokenizer has no pad token: give pad_id")
    queries, passages = list(queries), list(passages)
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    q_lengths = [
        len(ids)
        for ids in tokenizer(queries, add_special_tokens=False, return_attention_mask=False)[
            "input_ids"
        ]
    ]
    ids: list[list[int]] = [[] for _ in queries]
    types: list[list[int]] = [[] for _ in queries]
    long = [n >= room for n in q_lengths]  # only_second cannot keep such a query
    for strategy, rows in (
        ("only_second", [p for p, x in enumerate(long) if not x]),
        ("longest_first", [p for p, x in enumerate(long) if x]),
    ):
        if not rows:
            continue
        enc = tokenizer(
            [queries[p] for p in rows],
            [passages[p] for p in rows],
            truncation=strategy,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=True,
        )
        for k, p in enumerate(rows):
            ids[p] = enc["input_ids"][k]
            types[p] = enc["token_type_ids"][k]
    width = max(len(x) for x in ids)
    out_ids = np.full((len(ids), width), pad, dtype=np.int64)
    out_mask = np.zeros((len(ids), width), dtype=np.int64)
    out_types = np.zeros((len(ids), width), dtype=np.int64)
    for p, (row, row_types) in enumerate(zip(ids, types, strict=True)):
        out_ids[p, : len(row)] = row
        out_mask[p, : len(row)] = 1
        out_types[p, : len(row)] = row_types
    return torch.from_numpy(out_ids), torch.from_numpy(out_mask), torch.from_numpy(out_types)


def check_cross_encoder_init(config, where: str, max_length: int) -> None:
    """What an init model must allow before training starts: one label if it is already
    a sequence classifier, and positions for a whole pair."""
    architectures = getattr(config, "architectures", None) or []
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if classifier and config.num_labels != 1:
        raise InputError(
            f"{where}.init: a sequence classifier with {config.num_labels} labels; a "
            "cross-encoder has one (a relevance logit): start from an encoder or a "
            "cross-encoder with num_labels 1"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise InputError(
            f"{where}: max_query_length + max_passage_length = {max_length} tokens per "
            f"(query, passage) pair, but the model has {positions} positions"
        )


def write_cross_encoder_folder(
    model, tokenizer, out_dir: str | Path, metadata: Mapping[str, Any]
) -> Path:
    """Write `model` (an AutoModelForSequenceClassification with one label) and
    `tokenizer` as a transformers folder with pretraining.json and a model card,
    atomically.

    The weights go through a fresh model of the same config loaded with strict=True, so
    the folder holds every weight the class needs and nothing else.
    """
    from transformers import AutoModelForSequenceClassification

    if getattr(model.config, "num_labels", None) != 1:
        raise InputError(f"export: a cross-encoder has one label, got {model.config.num_labels}")
    fresh = AutoModelForSequenceClassification.from_config(model.config)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh = fresh.float().eval()
    size = sum(t.numel() * t.element_size() for t in fresh.state_dict().values())
    with atomic_dir(out_dir, needed=size + (16 << 20)) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(
            json.dumps(dict(metadata), indent=1, sort_keys=True, default=str) + "\n",
            encoding="utf-8",
        )
        (tmp / CARD_FILE).write_text(cross_encoder_card(metadata, fresh.config), encoding="utf-8")
    return Path(out_dir)


def cross_encoder_card(meta: Mapping[str, Any], config) -> str:
    """The model card of an exported cross-encoder."""
    cfg = meta.get("config") or {}
    name = meta.get("name", "cross-encoder")
    max_length = pair_max_length(
        cfg.get("max_query_length", 256), cfg.get("max_passage_length", 256)
    )
    out = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:",
        "- cross-encoder",
        "- reranking",
        "- contriever",
        "---",
        "",
        f"# {name}",
        "",
        "A cross-encoder re-ranker trained with the contriever-repro workflow: the query "
        "and a passage are read together and the model gives one relevance logit "
        f"({(config.architectures or ['?'])[0]}, num_labels 1). Higher is more relevant; "
        "the logit is not a probability.",
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'tok = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = AutoModelForSequenceClassification.from_pretrained("path/to/this/folder")',
        'enc = tok(["where was marie curie born?"], ["Maria Sklodowska was born in Warsaw."],',
        f'          truncation="only_second", max_length={max_length}, return_tensors="pt")',
        "with torch.no_grad():",
        "    scores = model.eval()(**enc).logits[:, 0]",
        "```",
        "",
        "## Training",
        "",
        f"- initial model: `{meta.get('init', '?')}`",
        f"- steps: {meta.get('step', '?')} of {meta.get('steps', '?')}",
        f"- processes: {meta.get('world_size', '?')}, queries per step: "
        f"{meta.get('global_batch', '?')}",
        "- objective: every query of a batch against every gold and negative passage of "
        "the batch, cross-entropy with the query's gold as target",
        "",
        "Training configuration (`pretraining.json` holds it in full):",
        "",
        "| key | value |",
        "|---|---|",
        *(f"| {k} | `{json.dumps(v, sort_keys=True)}` |" for k, v in sorted(cfg.items())),
    ]
    return "\n".join(out) + "\n"
