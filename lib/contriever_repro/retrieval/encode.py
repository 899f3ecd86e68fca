"""Batched, length-sorted encoding of queries and passages into embedding shards.

Texts are sorted by length (longest first, so an out-of-memory batch shows up at once)
and batched so padding is small; everything runs under `torch.inference_mode`, with
bf16/fp16 autocast when the model spec asks for it. Large corpora are split into
shards that are separate Snakemake jobs; inside a shard, finished chunks are kept on
disk so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.text import passage_text, prepare
from ..errors import InputError
from ..io import write_npy
from ..models.spec import ModelSpec, pool, torch_dtype
from ..progress import Progress
from ..training.augment import pad_batch
from .embeddings import embedding_meta, load_embeddings, save_embeddings  # noqa: F401

log = logging.getLogger(__name__)


def query_texts(queries: pd.DataFrame, spec: ModelSpec) -> list[str]:
    return [
        spec.query_prefix + prepare(t, spec.lowercase, spec.normalize_text)
        for t in queries["text"].tolist()
    ]


def passage_texts(corpus: pd.DataFrame, spec: ModelSpec) -> list[str]:
    return [
        spec.passage_prefix
        + prepare(passage_text(title, text, spec.use_title), spec.lowercase, spec.normalize_text)
        for title, text in zip(corpus["title"].tolist(), corpus["text"].tolist(), strict=True)
    ]


def shard_bounds(n: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Contiguous [start, end) of shard `shard` out of `num_shards`; sizes differ by <= 1."""
    if not 0 <= shard < num_shards:
        raise InputError(f"shard {shard} out of range for {num_shards} shards")
    base, rest = divmod(n, num_shards)
    start = shard * base + min(shard, rest)
    return start, start + base + (1 if shard < rest else 0)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    if device.type == "cpu" and dtype == "fp16":
        raise InputError("fp16 encoding needs a GPU; use bf16 or fp32 on CPU")
    return torch.autocast(device_type=device.type, dtype=torch_dtype(dtype))


def _precision(model, device: torch.device, dtype: str):
    """Weights already in `dtype` (load_encoder's weights_dtype on a GPU) run as they
    are; fp32 weights run under autocast to `dtype`."""
    weights = next(model.parameters()).dtype
    if weights == torch_dtype(dtype):
        return contextlib.nullcontext()
    if weights != torch.float32:
        raise InputError(f"the model's weights are {weights}: cannot encode in {dtype}")
    return _autocast(device, dtype)


# A token covers at least one character and natural text averages 4-5 characters per
# WordPiece token, so 16 characters per token leaves room while keeping what the
# tokenizer sees to kilobytes however long a document is.
CHARS_PER_TOKEN = 16
# Padded lengths are rounded up to a multiple of 8, which tensor cores need for full speed
# in fp16/bf16 and which makes shapes repeat; padding never changes an embedding (masked
# out of attention and pooling).
PAD_MULTIPLE = 8
# Texts are tokenised this many batches at a time, then grouped by token count.
BLOCK_BATCHES = 8
# Batches the tokenising thread may run ahead of the GPU.
PREFETCH_BATCHES = 4


def cut_at_space(text: str, limit: int) -> str:
    """`text` up to the first space at or after `limit` characters (all of it when it is
    no longer than `limit` or no space follows)."""
    if len(text) <= limit:
        return text
    end = text.find(" ", limit)
    return text if end < 0 else text[:end]


def token_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """`tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]` without
    tokenising text that truncation would throw away.

    Tokenising a 1 MB document to keep its first 512 tokens costs memory and time in
    proportion to the megabyte, so each text is first cut at a space after
    `max_length * CHARS_PER_TOKEN` characters. The tokenizers of the encoders used here
    (WordPiece, SentencePiece, byte-level BPE) split words at spaces before cutting them
    into pieces, so a prefix that ends before a space tokenises into exactly the first
    tokens of the whole text. If the cut text still fills `max_length`, truncation keeps
    those same tokens; one that does not fill (very long "words", runs of spaces) is cut
    again four times longer, until it fills or is whole. The result is the same ids as
    tokenising the whole texts.
    """
    texts = list(texts)
    limits = [max_length * CHARS_PER_TOKEN] * len(texts)
    while True:
        cut = [cut_at_space(t, n) for t, n in zip(texts, limits, strict=True)]
        ids = tokenizer(
            cut,
            padding=False,
            truncation=True,
            max_length=max_length,
            # only the ids: converting masks and type ids to Python lists is most of the
            # time a fast tokenizer spends outside its parallel Rust code
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        short = [
            i
            for i, (c, t) in enumerate(zip(cut, texts, strict=True))
            if len(c) < len(t) and len(ids[i]) < max_length
        ]
        if not short:
            return [list(x) for x in ids]
        for i in short:
            limits[i] *= 4


def pad_ids(
    ids: Sequence[Sequence[int]],
    pad_id: int,
    multiple: int = 1,
    side: str = "right",
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask padded as training.augment.pad_batch does."""
    input_ids, mask = pad_batch(ids, pad_id, multiple, side, max_length)
    return {"input_ids": input_ids, "attention_mask": mask}


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise InputError("the tokenizer has no pad token: cannot batch texts for encoding")
    return int(pad)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """`tokenizer(texts, padding=True, truncation=True, max_length=max_length)` as tensors,
    cut as token_ids does."""
    side = getattr(tokenizer, "padding_side", "right")
    return pad_ids(token_ids(tokenizer, texts, max_length), _pad_id(tokenizer), side=side)


def group_by_tokens(lengths: Sequence[int], max_batch: int, max_tokens: int) -> list[list[int]]:
    """Consecutive groups of positions whose padded size (count x longest) stays within
    `max_tokens` and whose count within `max_batch`; `lengths` is sorted longest first,
    so a group's first length is its width. Short texts thus travel in large batches and
    long ones in small batches of the same memory."""
    groups: list[list[int]] = []
    for i in range(len(lengths)):
        if groups:
            group = groups[-1]
            width = lengths[group[0]]
            if len(group) < max_batch and (len(group) + 1) * max(width, 1) <= max_tokens:
                group.append(i)
                continue
        groups.append([i])
    return groups


def token_batches(
    texts: Sequence[str],
    tokenizer,
    max_length: int,
    batch_size: int,
    max_tokens: int | None = None,
    pad_multiple: int = PAD_MULTIPLE,
    pin_memory: bool = False,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(positions in `texts`, padded batch) for every text once.

    Texts are tokenised BLOCK_BATCHES batches at a time, sorted by token count within the
    block and grouped by token budget (`max_tokens`, default batch_size x max_length):
    at most BLOCK_BATCHES x batch_size short texts share a batch, while a batch of long
    texts never holds more tokens than batch_size full-length ones.
    """
    max_tokens = max_tokens or batch_size * max_length
    pad, side = _pad_id(tokenizer), getattr(tokenizer, "padding_side", "right")
    block = batch_size * BLOCK_BATCHES
    for b0 in range(0, len(texts), block):
        ids = token_ids(tokenizer, texts[b0 : b0 + block], max_length)
        order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
        lengths = [len(ids[i]) for i in order]
        for group in group_by_tokens(lengths, block, max_tokens):
            rows = [order[i] for i in group]
            batch = pad_ids([ids[i] for i in rows], pad, pad_multiple, side, max_length)
            if pin_memory:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            yield np.asarray(rows, dtype=np.int64) + b0, batch


_DONE = object()


def in_background(items: Iterable, depth: int) -> Iterator:
    """Yield `items`, produced by a thread that runs up to `depth` items ahead.

    The encoder waits on the tokenizer otherwise: tokenising SciFact alone took 3.73 s,
    as long as the whole fp16 encoding (3.66 s) on an H200 (issue 12). Fast tokenizers
    release the GIL, so the thread overlaps with the GPU. An exception in the thread is
    raised here; a consumer that stops early stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, which raises it
            put(err)

    thread = threading.Thread(target=produce, name="tokenize", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _encode_sorted(
    texts: Sequence[str],
    tokenizer,
    model,
    max_length: int,
    batch_size: int,
    pooling: str,
    l2_normalize: bool,
    dtype: str,
    progress: Progress | None,
    max_tokens: int | None = None,
    prefetch: int | None = None,
) -> np.ndarray:
    """Embeddings of `texts` in their order.

    On a GPU the batches are tokenised and pinned by a background thread (in_background)
    and copied in and out asynchronously, so the GPU never waits on the host; on CPU the
    same batches are made inline (`prefetch=0`), since the model already uses every core.
    """
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    prefetch = (PREFETCH_BATCHES if cuda else 0) if prefetch is None else prefetch
    dim = model.config.hidden_size
    out = np.empty((len(texts), dim), dtype=np.float32)
    batches = token_batches(texts, tokenizer, max_length, batch_size, max_tokens, pin_memory=cuda)
    if prefetch > 0:
        batches = in_background(batches, prefetch)
    pending = None  # the previous batch's (rows, host copy, copy-done event)

    def finish(rows, host, done) -> None:
        if done is not None:
            done.synchronize()
        out[rows] = host.numpy()
        if progress is not None:
            progress.update(len(rows))

    with torch.inference_mode(), _precision(model, device, dtype):
        for rows, batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            hidden = model(**batch).last_hidden_state
            emb = pool(hidden.float(), batch["attention_mask"], pooling)
            if l2_normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            if cuda:
                host = torch.empty(emb.shape, dtype=emb.dtype, pin_memory=True)
                host.copy_(emb, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                current = (rows, host, done)
            else:
                current = (rows, emb, None)
            if pending is not None:
                finish(*pending)
            pending = current
        if pending is not None:
            finish(*pending)
    return out


def encode_texts(
    texts: Sequence[str],
    tokenizer,
    model,
    *,
    max_length: int,
    batch_size: int,
    pooling: str = "mean",
    l2_normalize: bool = False,
    dtype: str = "fp32",
    what: str = "encode",
    resume_dir: str | Path | None = None,
    resume_key: str = "",
    chunk_size: int = 50_000,
) -> np.ndarray:
    """Embed `texts` (returned in input order, float32).

    With `resume_dir`, the length-sorted texts are processed in chunks of `chunk_size`
    and each finished chunk is saved there, so a killed job restarts from the last one.
    `resume_key` identifies what produced the chunks (model settings, input); chunks
    left by anything else are discarded rather than silently mixed in.
    """
    n = len(texts)
    order = sorted(range(n), key=lambda i: (-len(texts[i]), i))
    sorted_texts = [texts[i] for i in order]
    progress = Progress(n, what, log, unit="texts")
    kwargs = dict(
        tokenizer=tokenizer,
        model=model,
        max_length=max_length,
        batch_size=batch_size,
        pooling=pooling,
        l2_normalize=l2_normalize,
        dtype=dtype,
    )
    if resume_dir is None:
        sorted_emb = _encode_sorted(sorted_texts, progress=progress, **kwargs)
    else:
        resume_dir = Path(resume_dir)
        key = f"{resume_key}|n={n}|chunk={chunk_size}|max_length={max_length}|dtype={dtype}"
        key_file = resume_dir / "resume_key.txt"
        if resume_dir.exists() and (not key_file.exists() or key_file.read_text() != key):
            log.info("%s: discarding chunks from a different configuration", what)
            shutil.rmtree(resume_dir)
        resume_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
        parts = []
        for c, start in enumerate(range(0, n, chunk_size)):
            chunk_file = resume_dir / f"chunk-{c:05d}-{start}-{min(n, start + chunk_size)}.npy"
            chunk = sorted_texts[start : start + chunk_size]
            if chunk_file.exists():
                part = np.load(chunk_file)
                if part.shape[0] == len(chunk):
                    log.info("%s: reusing finished chunk %s", what, chunk_file.name)
                    progress.update(len(chunk))
                    parts.append(part)
                    continue
            part = _encode_sorted(chunk, progress=progress, **kwargs)
            write_npy(part, chunk_file)
            parts.append(part)
        dim = model.config.hidden_size
        sorted_emb = np.concatenate(parts) if parts else np.empty((0, dim), np.float32)
    emb = np.empty_like(sorted_emb)
    emb[np.asarray(order, dtype=np.int64)] = sorted_emb
    return emb


def encode_table(
    table: pd.DataFrame, spec: ModelSpec, tokenizer, model, side: str, **kwargs
) -> tuple[list[str], np.ndarray]:
    """(ids, embeddings) of a corpus (`side="passage"`) or queries table with every
    setting the spec fixes (text preparation, length, pooling, normalisation, dtype);
    `kwargs` go to encode_texts (progress label, resume)."""
    if side == "passage":
        texts, ids = passage_texts(table, spec), table["doc_id"].tolist()
        max_length = spec.max_passage_length
    elif side == "query":
        texts, ids = query_texts(table, spec), table["query_id"].tolist()
        max_length = spec.max_query_length
    else:
        raise ValueError(f"side must be 'passage' or 'query', got {side!r}")
    emb = encode_texts(
        texts,
        tokenizer,
        model,
        max_length=max_length,
        batch_size=spec.batch_size,
        pooling=spec.pooling,
        l2_normalize=spec.l2_normalize,
        dtype=spec.dtype_for(side),
        **kwargs,
    )
    return ids, emb
