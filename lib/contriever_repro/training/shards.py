"""Pre-training text: line-aligned splitting, streaming tokenisation, chunk sampling.

Storage. One text file (one document per line) becomes one *token shard*:
  `<prefix>.tokens.npy`   int32 token ids of all documents, concatenated (no specials)
  `<prefix>.offsets.npy`  int64 document start offsets, n_docs + 1 entries
  `<prefix>.json`         tokenizer identity, source file and sha256, counts
Both arrays are plain `.npy` files, memory-mapped when read, so a rank never holds its
corpus in RAM (the authors load pickled tensors fully, spec §2.4). Unlike the authors'
flat tensor, document boundaries are kept in the offsets; the code-faithful sampler
ignores them, `respect_doc_boundaries=True` uses them. The `.json` is renamed into
place last, so its presence marks a complete shard.

Sampling (spec §2.4, with §15 row 16 fixed). Example k of rank r is a pure function of
(seed, r, k): its source, its chunk and (in `PretrainBatches`) its views come from
generators seeded with `SeedSequence(seed, spawn_key=(purpose, r, k))`, and the
per-epoch window offset of each source from (seed, r, epoch, source). Hence:
  * the sampler state is one integer, the next example index;
  * resuming is exact: load the state, or start `PretrainBatches` at the next batch;
  * DataLoader workers split the batch indices (worker w makes batches w, w + W, ...),
    and the DataLoader's round-robin, in-order fetching returns them as 0, 1, 2, ...,
    so the stream does not depend on the number of workers either. The training loop
    records `batch["index"] + 1` in its checkpoint and passes it back as `start_batch`.
Source and chunk draws use a different generator from the views, so changing the view
recipe (an ablation) leaves the sequence of chunks unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..data.text import normalize_text
from ..errors import InputError
from ..io import atomic_path
from ..progress import Progress
from .augment import ViewMaker, collate

log = logging.getLogger(__name__)

SHARD_FORMAT = "contriever-repro-token-shard/1"
_COMPARED = ("vocab_size", "vocab_sha256", "special_ids", "lowercase")
# SeedSequence spawn-key tags, one per use of randomness.
_TAG_SAMPLE, _TAG_VIEW, _TAG_OFFSET = 0, 1, 2


# --------------------------------------------------------------------------- tokenizer


def tokenizer_identity(tokenizer) -> dict:
    """What must match between tokenisation and training: vocabulary, specials, casing."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
    special = {
        name: getattr(tokenizer, f"{name}_token_id", None)
        for name in ("cls", "sep", "pad", "mask", "unk")
    }
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": digest,
        "special_ids": special,
        "all_special_ids": sorted(int(i) for i in tokenizer.all_special_ids),
        "lowercase": _lowercases(tokenizer),
    }


def _lowercases(tokenizer) -> bool:
    flag = getattr(tokenizer, "do_lower_case", None)
    if isinstance(flag, bool):
        return flag
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False

    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Lowercase" or node.get("lowercase") is True:
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(json.loads(backend.to_str()).get("normalizer"))


def _describe(identity: dict) -> str:
    return (
        f"{identity.get('name_or_path') or '?'} ({identity.get('class')}, "
        f"vocab {identity.get('vocab_size')} sha256 {str(identity.get('vocab_sha256'))[:12]}, "
        f"lowercase={identity.get('lowercase')}, specials {identity.get('special_ids')})"
    )


def check_tokenizer(shard_meta: dict, tokenizer) -> None:
    """Raise InputError, naming both tokenizers, if the shard was made with another one."""
    have = shard_meta["tokenizer"]
    want = tokenizer_identity(tokenizer)
    differ = [k for k in _COMPARED if have.get(k) != want.get(k)]
    if differ:
        raise InputError(
            f"token shard was made with a different tokenizer ({', '.join(differ)} differ): "
            f"shard has {_describe(have)}; given {_describe(want)}",
            shard_meta.get("meta_path"),
        )


# --------------------------------------------------------------------------- writing


class ShardPaths(NamedTuple):
    tokens: Path
    offsets: Path
    meta: Path


def shard_paths(out_prefix: str | Path) -> ShardPaths:
    p = str(out_prefix)
    return ShardPaths(Path(p + ".tokens.npy"), Path(p + ".offsets.npy"), Path(p + ".json"))


class _NpyAppender:
    """Stream a 1-D array into a `.npy` file whose length is known only at the end.

    numpy pads `.npy` headers so the shape can be rewritten in place
    (GROWTH_AXIS_MAX_DIGITS), so the header is written for length 0 and patched.
    """

    def __init__(self, path: Path, dtype):
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.f = open(path, "wb")  # noqa: SIM115 - closed in finish/__exit__
        self._write_header()
        self.header_len = self.f.tell()

    def _write_header(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.n,),
        }
        np.lib.format.write_array_header_1_0(self.f, header)

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.f.write(arr.tobytes())
        self.n += arr.size

    def finish(self) -> None:
        self.f.flush()
        self.f.seek(0)
        self._write_header()
        if self.f.tell() != self.header_len:
            raise RuntimeError("npy header changed size while patching its shape")
        self.f.close()

    def __enter__(self) -> _NpyAppender:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.f.close()


def _encode_batch(tokenizer, lines: list[str]) -> list[list[int]]:
    enc = tokenizer(
        lines,
        add_special_tokens=False,
        truncation=False,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return enc["input_ids"]


def tokenize_text_file(
    text_path: str | Path,
    tokenizer,
    out_prefix: str | Path,
    normalize: bool = False,
    batch_lines: int = 10000,
    min_chars: int = 1,
    batch_bytes: int = 64 << 20,
) -> dict:
    """Tokenise a one-document-per-line UTF-8 file into a memory-mappable token shard.

    Lines are tokenised in batches without special tokens and without truncation (as
    the authors' preprocess.py); lines with fewer than `min_chars` non-space characters
    are skipped, as are lines that yield no token. `normalize` applies the authors'
    character normaliser first (used for mContriever). The three outputs appear
    together or not at all. Returns the metadata written to `<out_prefix>.json`.
    """
    text_path = Path(text_path)
    if not text_path.is_file():
        raise InputError("file does not exist", text_path)
    if batch_lines < 1 or min_chars < 1:
        raise ValueError("batch_lines and min_chars must be >= 1")
    identity = tokenizer_identity(tokenizer)
    if identity["vocab_size"] >= 2**31:
        raise InputError("vocabulary too large for int32 token ids", text_path)

    paths = shard_paths(out_prefix)
    digest = hashlib.sha256()
    progress = Progress(text_path.stat().st_size, f"tokenise {text_path.name}", log, unit="bytes")
    counts = {"n_lines": 0, "n_blank_lines": 0, "n_no_token_lines": 0, "n_docs": 0, "n_tokens": 0}

    with contextlib.ExitStack() as stack:
        # Entered meta first so it is renamed last: the .json marks a complete shard.
        meta_tmp = stack.enter_context(atomic_path(paths.meta))
        offsets_tmp = stack.enter_context(atomic_path(paths.offsets))
        tokens_tmp = stack.enter_context(atomic_path(paths.tokens))
        tokens_out = stack.enter_context(_NpyAppender(tokens_tmp, np.int32))
        offsets_out = stack.enter_context(_NpyAppender(offsets_tmp, np.int64))
        offsets_out.append(np.zeros(1, dtype=np.int64))

        batch: list[str] = []
        pending = 0

        def flush() -> None:
            nonlocal pending
            ids = _encode_batch(tokenizer, batch)
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(
                itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())
            )
            lengths = lengths[lengths > 0]
            counts["n_no_token_lines"] += len(ids) - len(lengths)
            offsets_out.append(counts["n_tokens"] + np.cumsum(lengths))
            tokens_out.append(flat)
            counts["n_docs"] += len(lengths)
            counts["n_tokens"] += int(flat.size)
            progress.update(pending)
            pending = 0
            batch.clear()

        with open(text_path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                digest.update(raw)
                pending += len(raw)
                counts["n_lines"] += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise InputError(
                        f"not valid UTF-8: byte {raw[err.start : err.start + 1]!r} at "
                        f"column {err.start + 1} ({err.reason})",
                        text_path,
                        line=lineno,
                    ) from None
                line = line.rstrip("\r\n")
                if normalize:
                    line = normalize_text(line)
                if len(line.strip()) < min_chars:
                    counts["n_blank_lines"] += 1
                    continue
                batch.append(line)
                if len(batch) >= batch_lines or pending >= batch_bytes:
                    flush()
        if batch:
            flush()
        if pending:
            progress.update(pending)
        if counts["n_docs"] == 0:
            what = "no line produced any token" if counts["n_no_token_lines"] else "no text"
            raise InputError(
                f"{what}: {counts['n_lines']} lines, none with at least {min_chars} "
                "non-space characters and a token (empty corpus file?)",
                text_path,
            )
        meta = {
            "format": SHARD_FORMAT,
            "source": str(text_path),
            "source_sha256": digest.hexdigest(),
            "source_bytes": text_path.stat().st_size,
            "tokenizer": identity,
            "normalize": bool(normalize),
            "min_chars": min_chars,
            "add_special_tokens": False,
            "tokens_file": paths.tokens.name,
            "offsets_file": paths.offsets.name,
            "dtype": "int32",
            **counts,
        }
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info(
        "%s: %d docs, %d tokens (%d blank lines skipped) -> %s",
        text_path,
        meta["n_docs"],
        meta["n_tokens"],
        meta["n_blank_lines"],
        paths.tokens,
    )
    return meta


def read_shard_meta(prefix: str | Path) -> dict:
    """Load `<prefix>.json`, check it is a token shard; adds `meta_path` (not stored)."""
    path = shard_paths(prefix).meta
    if not path.is_file():
        raise InputError("token shard metadata does not exist", path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not valid JSON: {err}", path) from None
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        raise InputError(f"not a token shard description (format != {SHARD_FORMAT!r})", path)
    meta["meta_path"] = str(path)
    return meta


def find_shards(directory: str | Path) -> list[Path]:
    """Sorted shard prefixes (`<prefix>.json` files) in a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("token shard directory does not exist", directory)
    prefixes = sorted(p.with_suffix("") for p in directory.glob("*.json"))
    if not prefixes:
        raise InputError("no token shards (*.json) in directory", directory)
    return prefixes


def shards_for_rank(prefixes: Sequence[Path], rank: int, world_size: int) -> list[Path]:
    """This rank's contiguous part of the sorted shards (the authors' `split` loading)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    part = np.array_split(np.arange(len(prefixes)), world_size)[rank]
    if len(part) == 0:
        raise InputError(
            f"rank {rank} of {world_size} gets no shard: split the text into at least "
            f"{world_size} pieces (there are {len(prefixes)})"
        )
    return [Path(prefixes[i]) for i in part]


class TokenShards:
    """Several shards of one source, memory-mapped and read as one token stream.

    Positions are global over the shards in the given order, like the authors'
    concatenated tensor. Pickling (spawned DataLoader workers) stores only the paths;
    the arrays are mapped again on the other side.
    """

    def __init__(
        self, prefixes: Sequence[str | Path], tokenizer=None, name: str | None = None
    ) -> None:
        if not prefixes:
            raise InputError("no token shards given")
        self.prefixes = [Path(p) for p in prefixes]
        self.name = name or self.prefixes[0].parent.name
        self.metas = [read_shard_meta(p) for p in self.prefixes]
        first = self.metas[0]
        for meta in self.metas[1:]:
            differ = [k for k in _COMPARED if meta["tokenizer"].get(k) != first["tokenizer"][k]]
            if differ:
                raise InputError(
                    f"shards of one source were made with different tokenizers "
                    f"({', '.join(differ)} differ): {_describe(meta['tokenizer'])} vs "
                    f"{_describe(first['tokenizer'])} in {first['meta_path']}",
                    meta["meta_path"],
                )
            if meta["normalize"] != first["normalize"]:
                raise InputError(
                    f"normalize={meta['normalize']} but {first['meta_path']} has "
                    f"normalize={first['normalize']}",
                    meta["meta_path"],
                )
        if tokenizer is not None:
            check_tokenizer(first, tokenizer)
        self._open()

    @classmethod
    def from_dir(
        cls,
        directory: str | Path,
        tokenizer=None,
        rank: int = 0,
        world_size: int = 1,
        name: str | None = None,
    ) -> TokenShards:
        """Open this rank's part of the shards found in `directory`."""
        prefixes = shards_for_rank(find_shards(directory), rank, world_size)
        return cls(prefixes, tokenizer, name or Path(directory).name)

    def _open(self) -> None:
        self._tokens = []
        self._offsets = []
        for meta, prefix in zip(self.metas, self.prefixes, strict=True):
            paths = shard_paths(prefix)
            tokens = _load_npy(paths.tokens, np.int32)
            offsets = _load_npy(paths.offsets, np.int64)
            if (
                len(tokens) != meta["n_tokens"]
                or len(offsets) != meta["n_docs"] + 1
                or offsets[0] != 0
                or offsets[-1] != len(tokens)
            ):
                raise InputError(
                    "token shard arrays do not match their metadata (truncated or mixed files?)",
                    paths.meta,
                )
            self._tokens.append(tokens)
            self._offsets.append(offsets)
        sizes = np.array([len(t) for t in self._tokens], dtype=np.int64)
        self.token_starts = np.concatenate([[0], np.cumsum(sizes)])
        ndocs = np.array([len(o) - 1 for o in self._offsets], dtype=np.int64)
        self.doc_starts_per_shard = np.concatenate([[0], np.cumsum(ndocs)])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_tokens", "_offsets"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    @property
    def tokenizer_meta(self) -> dict:
        return self.metas[0]["tokenizer"]

    @property
    def normalize(self) -> bool:
        return bool(self.metas[0]["normalize"])

    @property
    def n_tokens(self) -> int:
        return int(self.token_starts[-1])

    @property
    def n_docs(self) -> int:
        return int(self.doc_starts_per_shard[-1])

    def tokens_at(self, start: int, length: int) -> np.ndarray:
        """A copy of tokens [start, start + length) of the stream, across shard edges."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {self.n_tokens})")
        pieces = []
        shard = int(np.searchsorted(self.token_starts, start, side="right")) - 1
        while length > 0:
            local = start - int(self.token_starts[shard])
            take = min(length, len(self._tokens[shard]) - local)
            if take > 0:
                pieces.append(np.array(self._tokens[shard][local : local + take]))
                start += take
                length -= take
            shard += 1
        if not pieces:
            return np.zeros(0, dtype=np.int32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def doc_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Global (start, length) of every document, int64."""
        bases = self.token_starts[:-1]
        starts = np.concatenate(
            [np.asarray(o[:-1]) + b for o, b in zip(self._offsets, bases, strict=True)]
        )
        lengths = np.concatenate([np.diff(np.asarray(o)) for o in self._offsets])
        return starts.astype(np.int64), lengths.astype(np.int64)

    def document(self, i: int) -> np.ndarray:
        """Tokens of document i (global index over the shards)."""
        if not 0 <= i < self.n_docs:
            raise IndexError(f"document {i} outside [0, {self.n_docs})")
        shard = int(np.searchsorted(self.doc_starts_per_shard, i, side="right")) - 1
        offsets = self._offsets[shard]
        j = i - int(self.doc_starts_per_shard[shard])
        return np.array(self._tokens[shard][offsets[j] : offsets[j + 1]])


def _load_npy(path: Path, dtype) -> np.ndarray:
    if not path.is_file():
        raise InputError("token shard array does not exist", path)
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise InputError(f"not a readable .npy array: {err}", path) from None
    if arr.ndim != 1 or arr.dtype != np.dtype(dtype):
        raise InputError(
            f"expected a 1-D {np.dtype(dtype)} array, got {arr.dtype}{arr.shape}", path
        )
    return arr


# --------------------------------------------------------------------------- sampling


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))
    )


class Chunk(NamedTuple):
    index: int  # example index in this rank's stream
    source: int  # position of the source in the sampler
    start: int  # global token position of the chunk in its source
    tokens: np.ndarray  # int32, no special tokens


class ChunkSampler:
    """Infinite, resumable stream of token chunks mixed over sources.

    Code-faithful default: each source's token stream is cut into consecutive windows
    of exactly `chunk_length` tokens starting at an offset in [0, chunk_length) drawn
    anew every epoch; windows cross document boundaries. With
    `respect_doc_boundaries=True`, documents shorter than `min_doc_tokens` are skipped
    and every other document of length l is cut into ceil(l / chunk_length) nearly equal
    consecutive windows, so no window crosses a document edge and none is a tiny
    remainder (all have at least min(l, chunk_length // 2) tokens).

    Each example draws a source with p_i ∝ (n_i / Σn)^sampling_coefficient, n_i being
    the number of windows (0 → uniform over sources, the Contriever default), then a
    uniformly random window of that source. An epoch is `epoch_size` examples, by
    default the number of windows in all sources together. See the module docstring for
    the seeding and resume design.
    """

    def __init__(
        self,
        sources: Mapping[str, TokenShards] | Sequence[TokenShards],
        chunk_length: int = 256,
        sampling_coefficient: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        respect_doc_boundaries: bool = False,
        min_doc_tokens: int = 32,
        epoch_size: int | None = None,
    ) -> None:
        if isinstance(sources, Mapping):
            self.names = [str(k) for k in sources]
            self.sources = list(sources.values())
        else:
            self.sources = list(sources)
            self.names = [s.name for s in self.sources]
        if not self.sources:
            raise InputError("no pre-training sources given")
        if chunk_length < 2:
            raise ValueError(f"chunk_length must be >= 2, got {chunk_length}")
        if seed < 0 or rank < 0:
            raise ValueError("seed and rank must be non-negative")
        ref = self.sources[0].tokenizer_meta
        for name, src in zip(self.names, self.sources, strict=True):
            if any(src.tokenizer_meta.get(k) != ref.get(k) for k in _COMPARED):
                raise InputError(
                    f"source {name!r} was tokenised with {_describe(src.tokenizer_meta)} but "
                    f"source {self.names[0]!r} with {_describe(ref)}"
                )
        self.chunk_length = int(chunk_length)
        self.sampling_coefficient = float(sampling_coefficient)
        self.seed = int(seed)
        self.rank = int(rank)
        self.respect_doc_boundaries = bool(respect_doc_boundaries)
        self.min_doc_tokens = int(min_doc_tokens)

        if self.respect_doc_boundaries:
            self._windows = [self._doc_windows(s) for s in self.sources]
            counts = [len(w[0]) for w in self._windows]
        else:
            counts = [s.n_tokens // self.chunk_length for s in self.sources]
            for name, src in zip(self.names, self.sources, strict=True):
                if src.n_tokens < 2 * self.chunk_length - 1:
                    raise InputError(
                        f"source {name!r} has {src.n_tokens} tokens, fewer than "
                        f"2·chunk_length − 1 = {2 * self.chunk_length - 1}, so some offsets "
                        "leave no full chunk"
                    )
        for name, n in zip(self.names, counts, strict=True):
            if n == 0:
                raise InputError(
                    f"source {name!r} has no document of at least {self.min_doc_tokens} tokens"
                )
        self.n_chunks = np.array(counts, dtype=np.int64)
        weights = (self.n_chunks / self.n_chunks.sum()) ** self.sampling_coefficient
        self.probs = weights / weights.sum()
        self._cum = np.cumsum(self.probs)
        self.epoch_size = int(epoch_size) if epoch_size else int(self.n_chunks.sum())
        if self.epoch_size < 1:
            raise ValueError("epoch_size must be >= 1")
        self.position = 0
        self._offset_cache: tuple[int, np.ndarray] | None = None

    def _doc_windows(self, src: TokenShards) -> tuple[np.ndarray, np.ndarray]:
        starts, lengths = src.doc_bounds()
        keep = lengths >= self.min_doc_tokens
        starts, lengths = starts[keep], lengths[keep]
        pieces = -(-lengths // self.chunk_length)  # ceil
        doc = np.repeat(np.arange(len(lengths)), pieces)
        j = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        k, length = pieces[doc], lengths[doc]
        lo = j * length // k
        hi = (j + 1) * length // k
        return starts[doc] + lo, hi - lo

    def windows(self, source: int) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of every window of a source in document mode."""
        if not self.respect_doc_boundaries:
            raise ValueError("windows are fixed only with respect_doc_boundaries=True")
        return self._windows[source]

    def epoch_offsets(self, epoch: int) -> np.ndarray:
        """The window offset of every source in `epoch` (code-faithful mode)."""
        if self._offset_cache is None or self._offset_cache[0] != epoch:
            offsets = np.array(
                [
                    _rng(self.seed, _TAG_OFFSET, self.rank, epoch, i).integers(0, self.chunk_length)
                    for i in range(len(self.sources))
                ],
                dtype=np.int64,
            )
            self._offset_cache = (epoch, offsets)
        return self._offset_cache[1]

    def chunk(self, index: int) -> Chunk:
        """Example `index` of this rank's stream; a pure function of (seed, rank, index)."""
        if index < 0:
            raise IndexError(f"negative example index {index}")
        rng = _rng(self.seed, _TAG_SAMPLE, self.rank, index)
        source = min(
            int(np.searchsorted(self._cum, rng.random(), side="right")), len(self._cum) - 1
        )
        src = self.sources[source]
        if self.respect_doc_boundaries:
            starts, lengths = self._windows[source]
            w = int(rng.integers(0, len(starts)))
            start, length = int(starts[w]), int(lengths[w])
        else:
            offset = int(self.epoch_offsets(index // self.epoch_size)[source])
            n = (src.n_tokens - offset) // self.chunk_length
            start = offset + int(rng.integers(0, n)) * self.chunk_length
            length = self.chunk_length
        return Chunk(index, source, start, src.tokens_at(start, length))

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        out = self.chunk(self.position)
        self.position += 1
        return out

    def config(self) -> dict:
        """Everything the stream depends on besides the position (checked on resume)."""
        return {
            "seed": self.seed,
            "rank": self.rank,
            "chunk_length": self.chunk_length,
            "sampling_coefficient": self.sampling_coefficient,
            "respect_doc_boundaries": self.respect_doc_boundaries,
            "min_doc_tokens": self.min_doc_tokens,
            "epoch_size": self.epoch_size,
            "sources": [
                [name, s.n_tokens, s.n_docs]
                for name, s in zip(self.names, self.sources, strict=True)
            ],
        }

    def state_dict(self) -> dict:
        return {"position": self.position, "config": self.config()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved in `state`; refuses a differently configured sampler."""
        saved = json.loads(json.dumps(state["config"]))
        mine = json.loads(json.dumps(self.config()))
        differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if differ:
            raise InputError(
                f"sampler state was saved with a different configuration ({', '.join(differ)}): "
                f"saved {[saved.get(k) for k in differ]}, now {[mine.get(k) for k in differ]}"
            )
        self.position = int(state["position"])


class PretrainBatches(torch.utils.data.IterableDataset):
    """Infinite batches of (query, key) views for `DataLoader(ds, batch_size=None)`.

    Batch b holds examples b·B … b·B + B − 1; its chunks come from the sampler and its
    views from a generator keyed by (seed, rank, example), so batch b is the same
    whatever `num_workers` is and whichever worker makes it. Each batch carries its
    `index`; resume by passing the next index as `start_batch`.
    """

    def __init__(
        self,
        sampler: ChunkSampler,
        views: ViewMaker,
        batch_size: int,
        start_batch: int = 0,
        pad_id: int = 0,
        pad_multiple: int = 1,
        max_width: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or start_batch < 0:
            raise ValueError("batch_size must be >= 1 and start_batch >= 0")
        self.sampler = sampler
        self.views = views
        self.batch_size = int(batch_size)
        self.start_batch = int(start_batch)
        self.pad_id = int(pad_id)
        self.pad_multiple, self.max_width = int(pad_multiple), max_width

    def batch(self, b: int) -> dict:
        pairs, sources = [], []
        for index in range(b * self.batch_size, (b + 1) * self.batch_size):
            chunk = self.sampler.chunk(index)
            rng = _rng(self.sampler.seed, _TAG_VIEW, self.sampler.rank, index)
            pairs.append(self.views(chunk.tokens, rng))
            sources.append(chunk.source)
        out = collate(pairs, self.pad_id, self.pad_multiple, self.max_width)
        out["sources"] = torch.tensor(sources, dtype=torch.long)
        out["index"] = b
        return out

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for b in itertools.count(self.start_batch + worker, n_workers):
            yield self.batch(b)
