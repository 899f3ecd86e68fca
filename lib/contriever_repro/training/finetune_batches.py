"""Batches for supervised fine-tuning: (query, gold, negatives) per example (spec §10).

`TrainingExamples` holds a fine-tuning set in arrays: query and passage texts (pyarrow
string arrays: MS MARCO's 8.8M passages are one buffer, not 8.8M Python objects), and
per example the positions of its positives and hard negatives in the passage list
(CSR offsets + flat int64), mapped from ids once with pandas.

`FinetuneBatches` yields, like `PretrainBatches`, dicts with `index`, `q_input_ids`,
`q_attention_mask` [B, Tq] and `k_input_ids`, `k_attention_mask` [B·(1+N), Tk] where
keys = [B golds (gold i belongs to query i); then the N negatives of query 0, of query
1, ...], the layout `InBatch` expects on every rank. Also `examples` [B] and `passages`
[B·(1+N)] (positions, for checks) and `n_hard` (hard negatives in the batch).

Determinism. Batch b on rank r is a pure function of (seed, b, r, data): global batch b
covers positions [b·G, (b+1)·G) of the concatenated epochs (G = batch_size·world_size,
epoch e = a permutation of all examples seeded by (seed, e)), rank r takes its slice
[b·G + r·B, b·G + (r+1)·B), and the per-example draws come from one generator seeded
by (seed, b, r). So resume is exact from a batch index alone, and the stream does not
depend on the number of DataLoader workers. Unlike the reference (example k to rank
k mod world), every rank sees a fresh slice of one global shuffle per epoch.

Per example (spec §10.2): gold = a random positive; each of the N negative slots is
"hard" with probability `hard_ratio`; n_hard = min(hard slots, available hard
negatives); the rest are random: uniform over the whole collection, never one of the
example's positives, all N negatives distinct. Where an example has fewer hard
negatives than hard slots, the missing ones are random negatives (the reference caps
at the number of `negative_ctxs` instead), so every rank always sends exactly
B·(1+N) keys and the cross-rank gather never waits on a shorter rank.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..data.text import normalize_text as _normalize
from ..errors import InputError
from .augment import pad_batch

log = logging.getLogger(__name__)

# SeedSequence spawn-key tags, one per use of randomness.
_TAG_EPOCH, _TAG_SAMPLE = 0, 1
# Below this share of free (non-excluded) passages, random negatives are drawn from an
# explicit list instead of by rejection (only tiny collections get there).
_DENSE = 0.5


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _as_strings(values, name: str) -> pa.Array:
    arr = pa.array(values, type=pa.large_string(), from_pandas=True)
    if arr.null_count:
        raise InputError(f"{name} has {arr.null_count} missing value(s)")
    return arr


def _flatten(lists: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column of id lists → (row of each item, items as an object array)."""
    lengths = lists.map(len).to_numpy(dtype=np.int64)
    items = np.fromiter(
        (str(x) for x in itertools.chain.from_iterable(lists)), dtype=object, count=lengths.sum()
    )
    return np.repeat(np.arange(len(lists), dtype=np.int64), lengths), items


def _csr(rows: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values grouped by row (rows must be sorted) → (offsets [n+1], flat values)."""
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return offsets, values.astype(np.int64, copy=False)


class TrainingExamples:
    """A fine-tuning set as arrays; see the module docstring."""

    def __init__(
        self,
        query_ids: np.ndarray,
        query_texts: pa.Array,
        passage_ids: np.ndarray,
        passage_texts: pa.Array,
        pos_offsets: np.ndarray,
        pos_flat: np.ndarray,
        hard_offsets: np.ndarray,
        hard_flat: np.ndarray,
    ) -> None:
        n = len(query_ids)
        if not (len(query_texts) == n and len(pos_offsets) == n + 1 == len(hard_offsets)):
            raise ValueError("query, positive and hard-negative arrays disagree in length")
        if len(passage_ids) != len(passage_texts):
            raise ValueError("passage ids and texts disagree in length")
        self.query_ids = query_ids
        self.query_texts = query_texts
        self.passage_ids = passage_ids
        self.passage_texts = passage_texts
        self.pos_offsets, self.pos_flat = pos_offsets, pos_flat
        self.hard_offsets, self.hard_flat = hard_offsets, hard_flat

    @property
    def n_examples(self) -> int:
        return len(self.query_ids)

    def __len__(self) -> int:
        return self.n_examples

    @property
    def n_passages(self) -> int:
        return len(self.passage_ids)

    def positives(self, i: int) -> np.ndarray:
        return self.pos_flat[self.pos_offsets[i] : self.pos_offsets[i + 1]]

    def hard(self, i: int) -> np.ndarray:
        return self.hard_flat[self.hard_offsets[i] : self.hard_offsets[i + 1]]

    @classmethod
    def from_tables(
        cls,
        queries_df: pd.DataFrame,
        corpus_df: pd.DataFrame,
        records_df: pd.DataFrame,
        mined_df: pd.DataFrame | None = None,
        hard_rank_min: int = 0,
    ) -> TrainingExamples:
        """Queries (query_id, text), corpus (doc_id, title, text), records (training_sets)
        and optionally a mined run (query_id, doc_id, rank, score).

        Hard negatives are the records' `negative_ids`, or, when `mined_df` is given, its
        documents in rank order (replacing the records' ones). Either list loses the
        query's positives and repeats, then its first `hard_rank_min` entries (the
        reference's `hard_negative_ctxs[negative_hard_min_idx:]`). Passage text is
        "title text", or text when the title is empty (spec §10.2).
        """
        if hard_rank_min < 0:
            raise InputError(f"hard_rank_min must be >= 0, got {hard_rank_min}")
        for name, df, cols in (
            ("queries", queries_df, ("query_id", "text")),
            ("corpus", corpus_df, ("doc_id", "text")),
            ("records", records_df, ("query_id", "positive_ids", "negative_ids")),
        ):
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise InputError(f"{name} table lacks columns {missing}")
        if records_df.empty:
            raise InputError("records table has no training query")

        qindex = pd.Index(queries_df["query_id"].astype(str))
        doc_index = pd.Index(corpus_df["doc_id"].astype(str))
        for name, index in (("queries", qindex), ("corpus", doc_index)):
            if not index.is_unique:
                dup = index[index.duplicated()][0]
                raise InputError(f"{name} table has duplicate id {dup!r}")
        rec_qids = records_df["query_id"].astype(str).to_numpy(dtype=object)
        if len(set(rec_qids)) != len(rec_qids):
            dup = pd.Index(rec_qids)[pd.Index(rec_qids).duplicated()][0]
            raise InputError(f"records table has two records for query {dup!r}")
        qpos = qindex.get_indexer(rec_qids)
        if (qpos < 0).any():
            bad = rec_qids[qpos < 0]
            raise InputError(
                f"{len(bad)} record quer(ies) missing from the queries table: first {list(bad[:5])}"
            )
        n = len(rec_qids)

        def positions(rows: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
            pos = doc_index.get_indexer(ids)
            if (pos < 0).any():
                k = int(np.argmax(pos < 0))
                raise InputError(
                    f"{what} {ids[k]!r} of query {rec_qids[rows[k]]!r} is not in the corpus "
                    f"table ({int((pos < 0).sum())} such id(s))"
                )
            return pos.astype(np.int64)

        rows, ids = _flatten(records_df["positive_ids"])
        if len(rows) == 0 or np.bincount(rows, minlength=n).min() == 0:
            k = int(np.argmin(np.bincount(rows, minlength=n)))
            raise InputError(f"query {rec_qids[k]!r} has no positive passage")
        pos_flat = positions(rows, ids, "positive")
        keys = np.unique(rows * len(doc_index) + pos_flat)
        pos_offsets, pos_flat = _csr(keys // len(doc_index), keys % len(doc_index), n)

        if mined_df is None:
            rows, ids = _flatten(records_df["negative_ids"])
            what = "negative"
        else:
            missing = [c for c in ("query_id", "doc_id", "rank") if c not in mined_df.columns]
            if missing:
                raise InputError(f"mined negatives table lacks columns {missing}")
            mined = mined_df.sort_values(["query_id", "rank"], kind="stable")
            rows = pd.Index(rec_qids).get_indexer(mined["query_id"].astype(str))
            keep = rows >= 0
            if not keep.all():
                log.info(
                    "mined negatives: ignoring %d row(s) of non-training queries", (~keep).sum()
                )
            rows = rows[keep].astype(np.int64)
            ids = mined["doc_id"].astype(str).to_numpy(dtype=object)[keep]
            what = "mined negative"
        hard = positions(rows, ids, what)
        # Drop positives and repeats, keeping each list's order (stable sort by row).
        key = rows * len(doc_index) + hard
        pos_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(pos_offsets))
        ok = ~np.isin(key, pos_rows * len(doc_index) + pos_flat)
        ok &= ~pd.Series(key).duplicated().to_numpy()
        rows, hard = rows[ok], hard[ok]
        order = np.argsort(rows, kind="stable")
        rows, hard = rows[order], hard[order]
        rank_in_list = pd.Series(rows).groupby(rows).cumcount().to_numpy()
        keep = rank_in_list >= hard_rank_min
        hard_offsets, hard_flat = _csr(rows[keep], hard[keep], n)

        qtexts = _as_strings(queries_df["text"].to_numpy(dtype=object)[qpos], "queries text")
        text = _as_strings(corpus_df["text"], "corpus text")
        if "title" in corpus_df.columns:
            title = pc.fill_null(
                pa.array(corpus_df["title"], type=pa.large_string(), from_pandas=True), ""
            )
            joined = pc.binary_join_element_wise(title, text, pa.scalar(" ", pa.large_string()))
            text = pc.if_else(pc.greater(pc.utf8_length(title), 0), joined, text)
        return cls(
            rec_qids,
            qtexts,
            doc_index.to_numpy(dtype=object),
            text,
            pos_offsets,
            pos_flat,
            hard_offsets,
            hard_flat,
        )


def steps_for_epochs(n_examples: int, epochs: float, global_batch: int) -> int:
    """Optimiser steps that cover `epochs` passes over `n_examples` (rounded up)."""
    if n_examples < 1 or epochs <= 0 or global_batch < 1:
        raise InputError(
            f"need n_examples >= 1, epochs > 0, global_batch >= 1; got {n_examples}, "
            f"{epochs}, {global_batch}"
        )
    if isinstance(epochs, int):
        return -(-n_examples * epochs // global_batch)
    return math.ceil(n_examples * epochs / global_batch)


class FinetuneBatches(torch.utils.data.IterableDataset):
    """Infinite fine-tuning batches for `DataLoader(ds, batch_size=None)`; see module doc.

    Padding is to the longest sequence of the batch, on the right, with `pad_id`
    (default: the tokenizer's), queries and keys separately, as `tokenizer(...,
    padding="longest")` does for BERT.
    """

    def __init__(
        self,
        examples: TrainingExamples,
        tokenizer,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_batch: int = 0,
        n_negatives: int = 1,
        hard_ratio: float = 0.0,
        max_query_length: int = 256,
        max_passage_length: int = 256,
        normalize_text: bool = False,
        pad_id: int | None = None,
        pad_multiple: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_batch < 0:
            raise InputError(
                f"need batch_size >= 1, 0 <= rank < world_size, start_batch >= 0; got "
                f"batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                f"start_batch={start_batch}"
            )
        if n_negatives < 0 or not 0.0 <= hard_ratio <= 1.0:
            raise InputError(
                f"need n_negatives >= 0 and hard_ratio in [0, 1]; got {n_negatives}, {hard_ratio}"
            )
        if max_query_length < 1 or max_passage_length < 1:
            raise InputError("max_query_length and max_passage_length must be >= 1")
        pad = tokenizer.pad_token_id if pad_id is None else pad_id
        if pad is None:
            raise InputError("the tokenizer has no pad token: give pad_id")
        most = int(np.diff(examples.pos_offsets).max())
        if examples.n_passages - most < n_negatives:
            k = int(np.argmax(np.diff(examples.pos_offsets)))
            raise InputError(
                f"the passage collection is too small: {examples.n_passages} passages, "
                f"query {examples.query_ids[k]!r} has {most} positive(s), so "
                f"{n_negatives} distinct negatives cannot be drawn"
            )
        self.examples = examples
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        self.n_negatives = int(n_negatives)
        self.hard_ratio = float(hard_ratio)
        self.max_query_length = int(max_query_length)
        self.max_passage_length = int(max_passage_length)
        self.normalize_text = bool(normalize_text)
        self.pad_id = int(pad)
        self.pad_multiple = int(pad_multiple)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def config(self) -> dict:
        """Everything the stream depends on besides the batch index (checked on resume)."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "rank": self.rank,
            "n_negatives": self.n_negatives,
            "hard_ratio": self.hard_ratio,
            "max_query_length": self.max_query_length,
            "max_passage_length": self.max_passage_length,
            "normalize_text": self.normalize_text,
            "n_examples": self.examples.n_examples,
            "n_passages": self.examples.n_passages,
        }

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = _rng(self.seed, _TAG_EPOCH, epoch).permutation(self.examples.n_examples)
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = perm
        return perm

    def example_indices(self, b: int) -> np.ndarray:
        """The B examples of batch b on this rank (its slice of the global batch)."""
        n = self.examples.n_examples
        start = b * self.global_batch + self.rank * self.batch_size
        positions = np.arange(start, start + self.batch_size, dtype=np.int64)
        epochs, within = np.divmod(positions, n)
        return np.array(
            [self._permutation(int(e))[w] for e, w in zip(epochs, within, strict=True)],
            dtype=np.int64,
        )

    def sample(self, i: int, rng: np.random.Generator) -> tuple[int, np.ndarray, int]:
        """(gold, negatives [N], n_hard) for example i; hard negatives come first."""
        ex = self.examples
        pos = ex.positives(i)
        gold = int(pos[rng.integers(len(pos))])
        hard = ex.hard(i)
        slots = int((rng.random(self.n_negatives) < self.hard_ratio).sum())
        n_hard = min(slots, len(hard))
        chosen = hard[rng.choice(len(hard), n_hard, replace=False)] if n_hard else hard[:0]
        randoms = self._random_negatives(pos, chosen, self.n_negatives - n_hard, rng)
        return gold, np.concatenate([chosen, randoms]), n_hard

    def _random_negatives(
        self, pos: np.ndarray, chosen: np.ndarray, k: int, rng: np.random.Generator
    ) -> np.ndarray:
        """k distinct passages, uniform over those not in `pos` or `chosen`.

        Rejection sampling: O(k + |pos|) while at least half the collection is free.
        """
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        n = self.examples.n_passages
        excluded = set(pos.tolist()) | set(chosen.tolist())
        if len(excluded) + k > _DENSE * n:
            free = np.setdiff1d(np.arange(n, dtype=np.int64), np.fromiter(excluded, np.int64))
            return rng.choice(free, k, replace=False)
        out = np.empty(k, dtype=np.int64)
        got = 0
        while got < k:
            c = int(rng.integers(n))
            if c not in excluded:
                excluded.add(c)
                out[got] = c
                got += 1
        return out

    def draw(self, b: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(examples [B], key passages [B·(1+N)] in key order, n_hard) of batch b."""
        rng = _rng(self.seed, _TAG_SAMPLE, b, self.rank)
        examples = self.example_indices(b)
        golds = np.empty(len(examples), dtype=np.int64)
        negatives = np.empty((len(examples), self.n_negatives), dtype=np.int64)
        n_hard = 0
        for row, i in enumerate(examples):
            golds[row], negatives[row], h = self.sample(int(i), rng)
            n_hard += h
        return examples, np.concatenate([golds, negatives.reshape(-1)]), n_hard

    def _encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize_text:
            texts = [_normalize(t) for t in texts]
        enc = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        seqs = [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]]
        return pad_batch(seqs, self.pad_id, self.pad_multiple, max_width=max_length)

    def batch(self, b: int) -> dict:
        examples, passages, n_hard = self.draw(b)
        ex = self.examples
        q_ids, q_mask = self._encode(
            ex.query_texts.take(pa.array(examples)).to_pylist(), self.max_query_length
        )
        k_ids, k_mask = self._encode(
            ex.passage_texts.take(pa.array(passages)).to_pylist(), self.max_passage_length
        )
        return {
            "index": b,
            "q_input_ids": q_ids,
            "q_attention_mask": q_mask,
            "k_input_ids": k_ids,
            "k_attention_mask": k_mask,
            "examples": torch.from_numpy(examples),
            "passages": torch.from_numpy(passages),
            "n_hard": n_hard,
        }

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for b in itertools.count(self.start_batch + worker, n_workers):
            yield self.batch(b)
