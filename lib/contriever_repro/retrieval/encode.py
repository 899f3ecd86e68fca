"""Batched, length-sorted encoding of queries and passages into embedding shards.

Texts are sorted by length (longest first, so an out-of-memory batch shows up at once)
and batched so padding is small; everything runs under `torch.inference_mode`, with
bf16/fp16 autocast when the model spec asks for it. Large corpora are split into
shards that are separate Snakemake jobs; inside a shard, finished chunks are kept on
disk so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.text import passage_text, prepare
from ..errors import InputError
from ..io import write_npy
from ..models.spec import ModelSpec, pool, torch_dtype
from ..progress import Progress
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


# A token covers at least one character and natural text averages 4-5 characters per
# WordPiece token, so 16 characters per token leaves room while keeping what the
# tokenizer sees to kilobytes however long a document is.
CHARS_PER_TOKEN = 16


def cut_at_space(text: str, limit: int) -> str:
    """`text` up to the first space at or after `limit` characters (all of it when it is
    no longer than `limit` or no space follows)."""
    if len(text) <= limit:
        return text
    end = text.find(" ", limit)
    return text if end < 0 else text[:end]


def tokenize(tokenizer, texts: Sequence[str], max_length: int):
    """`tokenizer(texts, padding=True, truncation=True, max_length=max_length)` (tensors)
    without tokenising text that truncation would throw away.

    Tokenising a 1 MB document to keep its first 512 tokens costs memory and time in
    proportion to the megabyte, so each text is first cut at a space after
    `max_length * CHARS_PER_TOKEN` characters. The tokenizers of the encoders used here
    (WordPiece, SentencePiece, byte-level BPE) split words at spaces before cutting them
    into pieces, so a prefix that ends before a space tokenises into exactly the first
    tokens of the whole text. If the cut text still fills `max_length`, truncation keeps
    those same tokens; one that does not fill (very long "words", runs of spaces) is cut
    again four times longer, until it fills or is whole. The result is the same input
    ids and attention mask as tokenising the whole texts.
    """
    texts = list(texts)
    limits = [max_length * CHARS_PER_TOKEN] * len(texts)
    while True:
        cut = [cut_at_space(t, n) for t, n in zip(texts, limits, strict=True)]
        enc = tokenizer(
            cut, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        short = [
            i
            for i, (c, t) in enumerate(zip(cut, texts, strict=True))
            if len(c) < len(t) and lengths[i] < max_length
        ]
        if not short:
            return enc
        for i in short:
            limits[i] *= 4


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
) -> np.ndarray:
    device = next(model.parameters()).device
    dim = model.config.hidden_size
    out = np.empty((len(texts), dim), dtype=np.float32)
    with torch.inference_mode(), _autocast(device, dtype):
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            enc = tokenize(tokenizer, batch, max_length)
            enc = {k: v.to(device) for k, v in enc.items() if k != "token_type_ids"}
            hidden = model(**enc).last_hidden_state
            emb = pool(hidden.float(), enc["attention_mask"], pooling)
            if l2_normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out[start : start + len(batch)] = emb.cpu().numpy()
            if progress is not None:
                progress.update(len(batch))
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
