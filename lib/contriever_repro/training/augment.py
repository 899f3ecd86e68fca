"""Positive pairs for contrastive pre-training: views of a chunk, token noise, batching.

Order of operations (paper §3, spec §3): take a chunk of token ids without special
tokens, build two views (independent crops, or inverse Cloze task), perturb each view
independently, and only then wrap it as [CLS] view [SEP]. Adding the special tokens
last is what guarantees that deletion, replacement and masking never touch them.

Choices the authors' code leaves open (spec §15 row 7):

* `replace` draws from `replaceable_ids(tokenizer)`: every vocabulary id except the
  special tokens and BERT's `[unused*]` placeholders, so a replacement is always a real
  word piece (the authors' `[start_id, vocab_size)` range is undefined in their code).
* `ict` samples the query span with the same length law as a crop,
  L = max(1, int(n·r)), r ~ U(ratio_min, ratio_max), at a uniform start, so ICT and
  cropping ablations differ only in how the key is formed. The paper does not give the
  span law of its ablation; Lee et al.'s sentence spans are not used because chunks
  carry no sentence boundaries. Optionally (`ict_keep_prob`, default 0) the key keeps
  the span, as Lee et al. do 10% of the time.

All randomness comes from the `numpy.random.Generator` passed in, so a caller that
seeds one generator per example gets reproducible views.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

METHODS = ("crop", "ict")
AUGMENTATIONS = ("none", "delete", "replace", "mask", "shuffle")

_UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>)$")


def random_crop(
    tokens: np.ndarray, ratio_min: float, ratio_max: float, rng: np.random.Generator
) -> np.ndarray:
    """A contiguous crop of length max(1, int(len·r)), r ~ U(ratio_min, ratio_max).

    The start is uniform over every position where the crop fits, [0, len − L].
    """
    n = len(tokens)
    if n == 0:
        raise ValueError("cannot crop an empty chunk")
    _check_ratios(ratio_min, ratio_max)
    length = max(1, int(n * rng.uniform(ratio_min, ratio_max)))
    start = int(rng.integers(0, n - length + 1))
    return tokens[start : start + length]


def make_views(
    chunk: np.ndarray,
    method: str,
    rng: np.random.Generator,
    ratio_min: float = 0.05,
    ratio_max: float = 0.5,
    ict_keep_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (query, key) token views of `chunk`, before augmentation and special tokens.

    `crop`: two independent crops (each its own ratio and start), so the views may
    overlap, nest or be disjoint and query and key follow the same distribution.
    `ict`: a span is the query and the rest of the chunk (before + after) is the key;
    with probability `ict_keep_prob` the key is the whole chunk instead.
    """
    chunk = np.asarray(chunk)
    if method == "crop":
        return (
            random_crop(chunk, ratio_min, ratio_max, rng),
            random_crop(chunk, ratio_min, ratio_max, rng),
        )
    if method == "ict":
        n = len(chunk)
        if n < 2:
            raise ValueError("the inverse Cloze task needs a chunk of at least 2 tokens")
        _check_ratios(ratio_min, ratio_max)
        if not 0.0 <= ict_keep_prob <= 1.0:
            raise ValueError(f"ict_keep_prob must be in [0, 1], got {ict_keep_prob}")
        length = min(max(1, int(n * rng.uniform(ratio_min, ratio_max))), n - 1)
        start = int(rng.integers(0, n - length + 1))
        query = chunk[start : start + length]
        if ict_keep_prob > 0 and rng.random() < ict_keep_prob:
            return query, chunk
        return query, np.concatenate([chunk[:start], chunk[start + length :]])
    raise ValueError(f"unknown view method {method!r}; expected one of {METHODS}")


def augment(
    tokens: np.ndarray,
    kind: str,
    p: float,
    rng: np.random.Generator,
    vocab_ids: np.ndarray | None = None,
    mask_id: int | None = None,
) -> np.ndarray:
    """Perturb each token position independently with probability `p`.

    `delete` drops the token, `replace` puts a uniform draw from `vocab_ids`, `mask`
    puts `mask_id`, `shuffle` permutes the selected tokens among their own positions.
    The input is never modified.
    """
    tokens = np.asarray(tokens)
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1], got {p}")
    if kind == "none" or p == 0.0 or len(tokens) == 0:
        return tokens.copy()
    hit = rng.random(len(tokens)) < p
    if kind == "delete":
        return tokens[~hit]
    out = tokens.copy()
    if kind == "replace":
        if vocab_ids is None or len(vocab_ids) == 0:
            raise ValueError("replace needs vocab_ids (see replaceable_ids)")
        out[hit] = np.asarray(vocab_ids)[rng.integers(0, len(vocab_ids), size=int(hit.sum()))]
    elif kind == "mask":
        if mask_id is None:
            raise ValueError("mask needs mask_id")
        out[hit] = mask_id
    else:  # shuffle
        positions = np.flatnonzero(hit)
        out[positions] = tokens[rng.permutation(positions)]
    return out


def replaceable_ids(tokenizer) -> np.ndarray:
    """Sorted ids a `replace` draw may produce: the vocabulary minus special and unused ids.

    Special tokens would leak structure ([SEP] mid-text, [PAD] with attention) and the
    `[unused*]` rows of BERT's embedding were never trained, so neither is a plausible
    word substitution.
    """
    special = set(tokenizer.all_special_ids)
    special_tokens = set(tokenizer.all_special_tokens)
    ids = [
        i
        for tok, i in tokenizer.get_vocab().items()
        if i not in special and tok not in special_tokens and not _UNUSED.match(tok)
    ]
    if not ids:
        raise ValueError("the tokenizer has no replaceable (non-special, used) tokens")
    return np.array(sorted(ids), dtype=np.int64)


def add_special_tokens(view: np.ndarray, cls_id: int, sep_id: int) -> np.ndarray:
    """[CLS] view [SEP] as int64; called after augmentation so they are never perturbed."""
    out = np.empty(len(view) + 2, dtype=np.int64)
    out[0] = cls_id
    out[1:-1] = view
    out[-1] = sep_id
    return out


def pad_batch(
    seqs: Sequence[Sequence[int]],
    pad_id: int = 0,
    multiple: int = 1,
    side: str = "right",
    max_width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence on `side`: (input_ids, attention_mask), both int64.

    `multiple` rounds the width up (never past `max_width`, where position embeddings
    end): on a GPU, widths that are multiples of 8 use the tensor cores fully, and a
    few repeating widths instead of one per batch let kernels and plans be reused.
    Padding changes no output (it is masked out of attention and pooling).
    """
    if not len(seqs):
        raise ValueError("cannot pad an empty batch")
    longest = max(len(s) for s in seqs)
    width = -(-longest // multiple) * multiple
    if max_width is not None:
        width = max(longest, min(width, max_width))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        mask[row, cols] = 1
    return ids, mask


def collate(
    views: Sequence[tuple[np.ndarray, np.ndarray]],
    pad_id: int = 0,
    multiple: int = 1,
    max_width: int | None = None,
) -> dict:
    """Batch (query, key) pairs; queries and keys are padded separately, as in the paper."""
    q_ids, q_mask = pad_batch([q for q, _ in views], pad_id, multiple, max_width=max_width)
    k_ids, k_mask = pad_batch([k for _, k in views], pad_id, multiple, max_width=max_width)
    return {
        "q_input_ids": q_ids,
        "q_attention_mask": q_mask,
        "k_input_ids": k_ids,
        "k_attention_mask": k_mask,
    }


class ViewMaker:
    """Chunk → ([CLS] query [SEP], [CLS] key [SEP]) with one view recipe.

    Defaults are the English Contriever recipe: independent crops with ratio in
    [0.05, 0.5] and token deletion with p = 0.1 in each view.
    """

    def __init__(
        self,
        cls_id: int,
        sep_id: int,
        method: str = "crop",
        ratio_min: float = 0.05,
        ratio_max: float = 0.5,
        augmentation: str = "delete",
        prob: float = 0.1,
        vocab_ids: np.ndarray | None = None,
        mask_id: int | None = None,
        ict_keep_prob: float = 0.0,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown view method {method!r}; expected one of {METHODS}")
        if augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"unknown augmentation {augmentation!r}; expected one of {AUGMENTATIONS}"
            )
        _check_ratios(ratio_min, ratio_max)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"augmentation probability must be in [0, 1], got {prob}")
        if augmentation == "replace" and (vocab_ids is None or len(vocab_ids) == 0):
            raise ValueError("augmentation 'replace' needs vocab_ids (see replaceable_ids)")
        if augmentation == "mask" and mask_id is None:
            raise ValueError("augmentation 'mask' needs mask_id")
        self.cls_id = int(cls_id)
        self.sep_id = int(sep_id)
        self.method = method
        self.ratio_min = ratio_min
        self.ratio_max = ratio_max
        self.augmentation = augmentation
        self.prob = prob
        self.vocab_ids = None if vocab_ids is None else np.asarray(vocab_ids, dtype=np.int64)
        self.mask_id = mask_id
        self.ict_keep_prob = ict_keep_prob

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> ViewMaker:
        """Take [CLS]/[SEP]/[MASK] and the replacement vocabulary from the tokenizer."""
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ValueError("the tokenizer has no [CLS]/[SEP] token to wrap views with")
        if kwargs.get("augmentation") == "replace" and kwargs.get("vocab_ids") is None:
            kwargs["vocab_ids"] = replaceable_ids(tokenizer)
        kwargs.setdefault("mask_id", tokenizer.mask_token_id)
        return cls(tokenizer.cls_token_id, tokenizer.sep_token_id, **kwargs)

    def config(self) -> dict:
        """The recipe as plain values, for run metadata."""
        return {
            "method": self.method,
            "ratio_min": self.ratio_min,
            "ratio_max": self.ratio_max,
            "augmentation": self.augmentation,
            "prob": self.prob,
            "ict_keep_prob": self.ict_keep_prob,
            "n_replaceable_ids": None if self.vocab_ids is None else len(self.vocab_ids),
        }

    def __call__(self, chunk: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        query, key = make_views(
            chunk, self.method, rng, self.ratio_min, self.ratio_max, self.ict_keep_prob
        )
        return tuple(
            add_special_tokens(
                augment(view, self.augmentation, self.prob, rng, self.vocab_ids, self.mask_id),
                self.cls_id,
                self.sep_id,
            )
            for view in (query, key)
        )


def _check_ratios(ratio_min: float, ratio_max: float) -> None:
    if not 0.0 < ratio_min <= ratio_max <= 1.0:
        raise ValueError(
            f"crop ratios must satisfy 0 < ratio_min <= ratio_max <= 1, "
            f"got {ratio_min}, {ratio_max}"
        )
