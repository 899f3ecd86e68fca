"""Cross-encoder re-ranking of a first-stage run (the paper's "Ours+CE", Table 2).

Each query's first `depth` hits (by rank) are scored by a sequence-classification model
that reads the (query, passage) pair, e.g. cross-encoder/ms-marco-MiniLM-L-6-v2, and
re-ordered by that score. The passage is beir's reranker text, `(title + " " + text)
.strip()`; the query text is used as it is. The score is the raw logit of the chosen
label (`label_index`): sentence-transformers' CrossEncoder puts a sigmoid on a single
logit, which is monotone and so gives the same order.

Order and scores of the re-ranked run:

* Ties: hits with equal cross-encoder scores keep their first-stage order (a stable
  sort), so a model that cannot tell two passages apart changes nothing between them.
* Beyond depth: beir's `Rerank.rerank` returns only the re-ranked top `depth` and drops
  the rest. Here every first-stage hit is kept: hits beyond `depth` follow all the
  re-ranked ones, in their first-stage order, so the run keeps its length and a metric
  at a cut-off beyond `depth` still sees the first-stage hits there.
* Recall@k for k >= depth is unchanged: re-ranking only permutes the first `depth`
  hits, so the set of the top k documents is the same set. Metrics that weigh the order
  inside the top `depth` (nDCG@10, MRR@10) are what re-ranking changes.
* The score column reproduces this order when a run is evaluated by score (trec_eval
  sorts by score and breaks ties by doc id, descending; beir's custom metrics sort by
  score, keeping insertion order). So each query's scores are made strictly decreasing
  in rank order: a re-ranked hit keeps its cross-encoder score, except that a hit tied
  with the one above it is moved to the next float32 below it (`nextafter`, one unit
  in the last place: ~5e-7 for a logit near 5); the i-th hit beyond depth (from 0) gets
  `lowest - 1 - i`, `lowest` being the query's lowest re-ranked score. Computed in
  float64 and stored as float32, these stay exact enough: a float32 of magnitude below
  2^22 has a spacing of at most 0.5, so values one apart round to distinct, still
  decreasing float32s; logits are O(10) and runs hold at most thousands of hits, so
  magnitudes stay below 10^4, far under 2^22 (4.2M). One final pass checks the
  strict decrease and nudges any value that breaks it one ulp down, whatever the
  magnitudes. Ranks are rewritten 1..n.

Tokenisation: pairs are tokenised as (query, passage) with truncation `only_second`,
which cuts only the passage; a query that leaves no room for a single passage token
(query tokens + special tokens >= max_length) falls back to `longest_first` (rare:
a query of hundreds of tokens). As in dense encoding (encode.tokenize), a long passage
is first cut at a space after `max_length * CHARS_PER_TOKEN` characters (again,
longer, until it fills `max_length` tokens or is whole), which gives the same input
ids as tokenising it whole; `longest_first` pairs are tokenised whole. Pairs are
sorted by their token length for batching, so padding is small, and the scores come
back in input order; the model runs in eval mode under `torch.inference_mode`, so
scoring is deterministic (no dropout).

Sharding: for large query sets, each shard re-ranks the queries of `query_shard`:
sorted unique query ids split into contiguous blocks (sizes differ by at most one).
A shard reads only its queries and the passages its hits point at (`read_corpus_docs`)
and `merge_runs` puts shards back together, checking no query is lost or doubled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import RUN_SCHEMA, read_rows_with_ids, read_table
from ..models.attention import from_pretrained
from ..models.cross_encoder import encode_pairs
from ..models.spec import DTYPES, torch_dtype
from ..progress import Progress
from .encode import CHARS_PER_TOKEN, cut_at_space, shard_bounds

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_DEPTH = 100
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 512
# How many offending ids an error message lists.
_SHOW = 5
# Texts tokenised at once when counting tokens (see _cut_texts).
_CUT_CHUNK = 4096


@dataclass
class CrossEncoder:
    """A loaded cross-encoder: the model, its tokenizer and which output is the score."""

    folder: str
    model: Any
    tokenizer: Any
    label_index: int
    dtype: str
    device: torch.device

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


def _examples(items: Iterable[Any]) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:_SHOW])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")


def load_cross_encoder(
    folder: str | Path,
    label_index: int | None = None,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
) -> CrossEncoder:
    """Load a sequence-classification model and its tokenizer from a local folder.

    Hub ids are fetched into folders by the workflow first; this never contacts the
    hub. A head with several outputs needs `label_index` (which output means
    "relevant"); a folder without trained classification weights (a plain encoder)
    is refused rather than scored with a random head. fp16/bf16 cast the weights;
    fp16 on CPU is refused (bf16 and fp32 run there).
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            "not a local folder: cross-encoders are loaded from folders (hub models are "
            "fetched first by the workflow)",
            folder,
        )
    if dtype not in DTYPES:
        raise InputError(f"cross-encoder dtype must be one of {DTYPES}, got {dtype!r}", folder)
    device = torch.device(device)
    if device.type == "cpu" and dtype == "fp16":
        raise InputError("cross-encoder dtype fp16 needs a GPU; use bf16 or fp32 on CPU", folder)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"no loadable Hugging Face model config: {err}", folder) from err
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise InputError(
            f"not a cross-encoder: its architectures are {architectures}, expected a "
            "...ForSequenceClassification model (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2)",
            folder,
        )
    num_labels = int(config.num_labels)
    id2label = getattr(config, "id2label", None) or {}
    if label_index is None:
        if num_labels > 1:
            raise InputError(
                f"the classification head has num_labels={num_labels} outputs "
                f"(id2label {dict(id2label)}); set label_index to the output that scores "
                "relevance",
                folder,
            )
        label_index = 0
    if isinstance(label_index, bool) or not 0 <= int(label_index) < num_labels:
        raise InputError(
            f"label_index {label_index!r} is out of range: the head has num_labels="
            f"{num_labels} outputs (id2label {dict(id2label)})",
            folder,
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model, info = from_pretrained(
            AutoModelForSequenceClassification,
            folder,
            local_files_only=True,
            output_loading_info=True,
        )
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the cross-encoder: {err}", folder) from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise InputError(
            f"the folder lacks trained weights {_examples(missing)}: a randomly initialised "
            "classification head would score at random (is it a bi-encoder, not a "
            "cross-encoder?)",
            folder,
        )
    model.eval()
    model.to(device)
    if dtype != "fp32":
        model.to(torch_dtype(dtype))
    return CrossEncoder(str(folder), model, tokenizer, int(label_index), dtype, device)


def passage_text(title: str | None, text: str | None) -> str:
    """beir's reranker passage: `(title + " " + text).strip()` (a missing part is "")."""
    return (f"{title or ''} {text or ''}").strip()


def _cut_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[str], list[int]]:
    """Each text cut at a space so that it still fills `max_length` tokens (or whole),
    and its token count without special tokens, capped at `max_length`.

    Truncation `only_second` keeps the passage's first tokens, at most `max_length`,
    so a prefix that fills `max_length` tokens on its own gives the same pair input ids
    as the whole passage. (`longest_first` does look further: which side is longer
    decides how it splits the room, so pairs truncated that way use whole texts.)
    """
    limits = [max_length * CHARS_PER_TOKEN] * len(texts)
    cut = list(texts)
    lengths = [0] * len(texts)
    todo = list(range(len(texts)))
    while todo:
        again = []
        # In chunks: the token ids of every passage of a large shard at once would take
        # gigabytes, and only their counts are kept.
        for start in range(0, len(todo), _CUT_CHUNK):
            part = todo[start : start + _CUT_CHUNK]
            batch = [cut_at_space(texts[i], limits[i]) for i in part]
            enc = tokenizer(batch, add_special_tokens=False, truncation=True, max_length=max_length)
            for i, c, ids in zip(part, batch, enc["input_ids"], strict=True):
                cut[i], lengths[i] = c, len(ids)
                if len(c) < len(texts[i]) and len(ids) < max_length:
                    limits[i] *= 4
                    again.append(i)
        todo = again
    return cut, lengths


def _tokenize_pairs(tokenizer, queries, passages, max_length: int) -> dict:
    """Padded model inputs of the pairs, tokenised exactly as a cross-encoder trained here
    saw them (models.cross_encoder.encode_pairs: only_second, longest_first for a query
    that leaves the passage no room)."""
    ids, mask, types = encode_pairs(tokenizer, queries, passages, max_length)
    enc = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in tokenizer.model_input_names:
        enc["token_type_ids"] = types
    return enc


def score_pairs(
    ce: CrossEncoder,
    queries: Sequence[str],
    passages: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    what: str = "re-rank",
) -> np.ndarray:
    """Cross-encoder score (raw logit of `ce.label_index`) of each (query, passage)
    pair, float32, in input order; batches are formed from length-sorted pairs."""
    import torch

    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries for {len(passages)} passages")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if max_length < 1:
        raise InputError(f"max_length must be positive, got {max_length}")
    if ce.max_positions is not None and max_length > ce.max_positions:
        raise InputError(
            f"max_length {max_length} exceeds the model's {ce.max_positions} positions",
            ce.folder,
        )
    n = len(queries)
    out = np.empty(n, dtype=np.float32)
    if n == 0:
        return out
    tokenizer = ce.tokenizer
    # Each distinct text is cut and counted once (a query comes with `depth` passages).
    unique_q = list(dict.fromkeys(queries))
    unique_p = list(dict.fromkeys(passages))
    q_cut, q_len = _cut_texts(tokenizer, unique_q, max_length)
    p_cut, p_len = _cut_texts(tokenizer, unique_p, max_length)
    q_of = {t: i for i, t in enumerate(unique_q)}
    p_of = {t: i for i, t in enumerate(unique_p)}
    qi = [q_of[t] for t in queries]
    pi = [p_of[t] for t in passages]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    only_second = [q_len[a] + special < max_length for a in qi]
    # Longest first (an out-of-memory batch shows up at once), ties in input order.
    width = [min(q_len[a] + p_len[b] + special, max_length) for a, b in zip(qi, pi, strict=True)]
    order = sorted(range(n), key=lambda i: (-width[i], i))

    model = ce.model
    progress = Progress(n, what, log, unit="pairs")
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            # longest_first pairs get their whole texts: how it splits the room between
            # the two sides depends on which side is longer, however long they are.
            enc = _tokenize_pairs(
                tokenizer,
                [q_cut[qi[i]] if only_second[i] else unique_q[qi[i]] for i in batch],
                [p_cut[pi[i]] if only_second[i] else unique_p[pi[i]] for i in batch],
                max_length,
            )
            enc = {k: v.to(ce.device) for k, v in enc.items()}
            logits = model(**enc).logits
            out[np.asarray(batch)] = logits[:, ce.label_index].float().cpu().numpy()
            progress.update(len(batch))
    if not np.isfinite(out).all():
        raise InputError(
            f"the cross-encoder gave {int((~np.isfinite(out)).sum())} non-finite scores "
            f"(dtype {ce.dtype}: fp16 can overflow; try bf16 or fp32)",
            ce.folder,
        )
    return out


def _strictly_decreasing(scores: np.ndarray) -> np.ndarray:
    """`scores` (non-increasing float32) with each value that does not fall below the
    one before it moved to the next float32 below that one."""
    s = np.asarray(scores, dtype=np.float32).copy()
    if len(s) < 2 or bool(np.all(s[1:] < s[:-1])):
        return s
    down = np.float32(-np.inf)
    for i in range(1, len(s)):
        if not s[i] < s[i - 1]:
            s[i] = np.nextafter(s[i - 1], down)
    return s


def _query_scores(ce_sorted: np.ndarray, n_rest: int) -> np.ndarray:
    """One query's final scores: its re-ranked hits (CE scores, sorted descending), then
    `n_rest` hits beyond depth at lowest - 1, lowest - 2, ... (see the module docstring)."""
    top = _strictly_decreasing(ce_sorted)
    rest = (np.float64(top[-1]) - 1.0 - np.arange(n_rest, dtype=np.float64)).astype(np.float32)
    return _strictly_decreasing(np.concatenate([top, rest]))


def _check_run(run: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in RUN_SCHEMA.names if c not in run.columns]
    if missing:
        raise InputError(f"the first-stage run is missing columns {missing}")
    run = run[RUN_SCHEMA.names].astype({"query_id": str, "doc_id": str})
    run = run.sort_values(["query_id", "rank"], kind="stable").reset_index(drop=True)
    dup = run.duplicated(["query_id", "doc_id"])
    if dup.any():
        row = run[dup].iloc[0]
        raise InputError(
            f"the first-stage run lists doc {row['doc_id']!r} twice for query {row['query_id']!r}"
        )
    return run


def rerank_run(
    run: pd.DataFrame,
    queries: pd.DataFrame,
    corpus: pd.DataFrame,
    ce: CrossEncoder,
    depth: int = DEFAULT_DEPTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    corpus_size: int | None = None,
) -> pd.DataFrame:
    """Re-rank each query's first `depth` hits by cross-encoder score (see the module
    docstring for ties, hits beyond depth and the score column); a run table back.

    Every query needs at least `depth` hits, or the first stage was cut too short
    (its top_k below the depth) and re-ranking would quietly do less than asked. A
    corpus of at most `depth` documents (`corpus_size`, default len(corpus); pass the
    full size when `corpus` holds only the documents needed) is whole in each query's
    hits, less the query's own id when it is a document (identical ids are dropped at
    search). `corpus` may hold just the documents the run points at (and, for that
    check on a small corpus, the query ids); the others are never turned into text.
    """
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise InputError(f"re-ranking depth must be a positive integer, got {depth!r}")
    run = _check_run(run)
    if run.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _RUN_DTYPES.items()})
    corpus_size = len(corpus) if corpus_size is None else int(corpus_size)
    corpus_ids = corpus["doc_id"].astype(str)

    counts = run.groupby("query_id", sort=True).size()
    need = min(depth, corpus_size)
    short = counts[counts < need]
    if len(short) and corpus_size <= depth:
        # The whole corpus less the query's own id (dropped as an identical id) is full.
        own = short.index.isin(corpus_ids) & (short.to_numpy() == corpus_size - 1)
        short = short[~own]
    if len(short):
        q, c = short.index[0], int(short.iloc[0])
        raise InputError(
            f"query {q!r} has {c} hits in the first-stage run, fewer than the re-ranking "
            f"depth {depth} ({len(short)} such queries: {_examples(short.index)}); "
            "retrieve at least `depth` hits per query (search top_k) or lower the depth"
        )

    query_text = dict(zip(queries["query_id"].astype(str), queries["text"], strict=True))
    absent_q = [q for q in counts.index if q not in query_text]
    if absent_q:
        raise InputError(
            f"{len(absent_q)} run queries are not in the queries table: {_examples(absent_q)}"
        )

    run["pos"] = run.groupby("query_id", sort=False).cumcount()
    top = run[run["pos"] < depth]
    needed = pd.Index(top["doc_id"].unique())
    docs = corpus[corpus_ids.isin(needed)].drop_duplicates("doc_id")
    text_of = dict(
        zip(
            docs["doc_id"].astype(str),
            (passage_text(t, x) for t, x in zip(docs["title"], docs["text"], strict=True)),
            strict=True,
        )
    )
    absent_d = [d for d in needed if d not in text_of]
    if absent_d:
        raise InputError(
            f"{len(absent_d)} run documents are not in the corpus: {_examples(absent_d)} "
            "(a run from another corpus or dataset?)"
        )

    start = time.perf_counter()
    scores = score_pairs(
        ce,
        [query_text[q] for q in top["query_id"]],
        [text_of[d] for d in top["doc_id"]],
        batch_size=batch_size,
        max_length=max_length,
    )
    seconds = time.perf_counter() - start
    log.info(
        "re-ranked %d queries at depth %d: %d pairs in %.1f s (%.1f pairs/s)",
        len(counts),
        depth,
        len(top),
        seconds,
        len(top) / max(seconds, 1e-9),
    )
    return _assemble(run, scores, depth)


_RUN_DTYPES = {"query_id": str, "doc_id": str, "rank": "int32", "score": "float32"}


def _assemble(run: pd.DataFrame, scores: np.ndarray, depth: int) -> pd.DataFrame:
    """The re-ranked run from the first-stage run (sorted by query, rank; with `pos`)
    and the scores of its `pos < depth` rows, in row order."""
    run = run.copy()
    run["ce"] = np.nan
    is_top = (run["pos"] < depth).to_numpy()
    run.loc[is_top, "ce"] = scores.astype(np.float64)
    # Re-ranked hits by score (ties: first-stage position), then the rest by position.
    run["block"] = (~is_top).astype(np.int8)
    run["key"] = np.where(is_top, -run["ce"].to_numpy(), 0.0)
    run = run.sort_values(["query_id", "block", "key", "pos"], kind="stable")
    run = run.reset_index(drop=True)
    bounds = np.flatnonzero(run["query_id"].to_numpy()[1:] != run["query_id"].to_numpy()[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(run)]])
    ce = run["ce"].to_numpy(dtype=np.float64)
    block = run["block"].to_numpy()
    final = np.empty(len(run), dtype=np.float32)
    for s, e in zip(starts, ends, strict=True):
        n_top = int((block[s:e] == 0).sum())
        final[s:e] = _query_scores(ce[s : s + n_top].astype(np.float32), e - s - n_top)
    run["score"] = final
    run["rank"] = run.groupby("query_id", sort=False).cumcount() + 1
    return run[RUN_SCHEMA.names].astype(_RUN_DTYPES).reset_index(drop=True)


def query_shard(query_ids: Iterable[str], shard: int, num_shards: int) -> list[str]:
    """The query ids shard `shard` of `num_shards` re-ranks: the sorted unique ids cut
    into contiguous blocks whose sizes differ by at most one (deterministic, so every
    job and the merge agree)."""
    if isinstance(num_shards, bool) or num_shards < 1:
        raise InputError(f"num_shards must be a positive integer, got {num_shards!r}")
    ids = sorted({str(q) for q in query_ids})
    start, end = shard_bounds(len(ids), num_shards, shard)
    return ids[start:end]


def read_corpus_docs(path: str | Path, doc_ids: Iterable[str]) -> pd.DataFrame:
    """The rows of a corpus parquet whose doc_id is in `doc_ids`: read row group by row
    group (io.read_rows_with_ids), so a shard never holds the text of the other millions
    of passages."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path)
    names = ("doc_id", "title", "text")
    missing = [c for c in names if c not in pq.ParquetFile(path).schema_arrow.names]
    if missing:
        raise InputError(f"not a corpus table: missing columns {missing}", path)
    table, _ = read_rows_with_ids(path, doc_ids, names)
    return table.to_pandas()


def merge_runs(
    runs: Sequence[pd.DataFrame | str | Path], query_ids: Iterable[str] | None = None
) -> pd.DataFrame:
    """Concatenate shard runs (tables or parquet paths), sorted by query and rank.

    A query in two shards is an error (naming both); with `query_ids` (the first-stage
    run's queries) a query missing from every shard, or one no shard should have, is
    an error too.
    """
    tables, names = [], []
    for i, r in enumerate(runs):
        if isinstance(r, str | Path):
            tables.append(read_table(r, "run"))
            names.append(str(r))
        else:
            tables.append(r)
            names.append(f"shard {i}")
    if not tables:
        raise InputError("no shard runs to merge")
    owner: dict[str, str] = {}
    for name, table in zip(names, tables, strict=True):
        for q in table["query_id"].astype(str).unique():
            if q in owner:
                raise InputError(f"query {q!r} is in two shard runs: {owner[q]} and {name}")
            owner[q] = name
    if query_ids is not None:
        expected = {str(q) for q in query_ids}
        lost = sorted(expected - owner.keys())
        if lost:
            raise InputError(
                f"{len(lost)} first-stage queries are in no shard run: {_examples(lost)}"
            )
        extra = sorted(owner.keys() - expected)
        if extra:
            raise InputError(
                f"{len(extra)} shard-run queries are not in the first-stage run: {_examples(extra)}"
            )
    merged = pd.concat([t[RUN_SCHEMA.names] for t in tables], ignore_index=True)
    merged = merged.astype(_RUN_DTYPES)
    merged = merged.sort_values(["query_id", "rank"], kind="stable")
    return merged.reset_index(drop=True)
