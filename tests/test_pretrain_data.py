"""Pre-training data: splitting, tokenisation to shards, and the chunk sampler.

Most tests use a word-level tokenizer where word `wN` has id N + 5, so expected token
streams, chunk contents and document boundaries can be written down exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import pytest
import torch

import contriever_repro
from contriever_repro.data.corpora import split_text_file
from contriever_repro.errors import InputError
from contriever_repro.training.augment import ViewMaker
from contriever_repro.training.shards import (
    ChunkSampler,
    PretrainBatches,
    TokenShards,
    check_tokenizer,
    find_shards,
    shards_for_rank,
    tokenize_text_file,
    tokenizer_identity,
)

N_WORDS = 5000


def word_tokenizer(n_words: int = N_WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    vocab.update({f"w{i}": i + 5 for i in range(n_words)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def wtok():
    return word_tokenizer()


def words(ids) -> str:
    return " ".join(f"w{i}" for i in ids)


def files_in(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def make_source(tmp, name, docs, tok, n_shards=1):
    """Write docs (lists of word numbers) as text, tokenise in `n_shards` pieces."""
    text = tmp / f"{name}.txt"
    text.write_text("".join(words(d) + "\n" for d in docs), encoding="utf-8")
    pieces = split_text_file(text, n_shards, tmp / f"{name}-split") if n_shards > 1 else [text]
    out = tmp / f"{name}-tok"
    for piece in pieces:
        tokenize_text_file(piece, tok, out / piece.stem)
    return TokenShards.from_dir(out, tok, name=name)


# --------------------------------------------------------------------------- tokenising


def test_tokenize_known_answer(tmp_path, wtok):
    text = tmp_path / "in.txt"
    data = b"w1 w2 w3\n\n   \nw4\r\nzz w5"
    text.write_bytes(data)
    meta = tokenize_text_file(text, wtok, tmp_path / "out" / "in")
    tokens = np.load(tmp_path / "out" / "in.tokens.npy", mmap_mode="r")
    offsets = np.load(tmp_path / "out" / "in.offsets.npy", mmap_mode="r")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.int32
    assert offsets.dtype == np.int64
    assert tokens.tolist() == [6, 7, 8, 9, 1, 10]  # zz is [UNK] = 1
    assert offsets.tolist() == [0, 3, 4, 6]
    assert meta["n_lines"] == 5 and meta["n_blank_lines"] == 2
    assert meta["n_docs"] == 3 and meta["n_tokens"] == 6
    assert meta["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["tokenizer"] == tokenizer_identity(wtok)
    assert meta["tokenizer"]["special_ids"] == {"cls": 2, "sep": 3, "pad": 0, "mask": 4, "unk": 1}
    assert json.loads((tmp_path / "out" / "in.json").read_text()) == meta
    assert files_in(tmp_path / "out") == ["in.json", "in.offsets.npy", "in.tokens.npy"]


def test_tokenize_streams_in_batches_identically(tmp_path, wtok):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, N_WORDS, size=rng.integers(1, 40)) for _ in range(500)]
    text = tmp_path / "in.txt"
    text.write_text("".join(words(d) + "\n" for d in docs), encoding="utf-8")
    tokenize_text_file(text, wtok, tmp_path / "a", batch_lines=10000)
    tokenize_text_file(text, wtok, tmp_path / "b", batch_lines=7, batch_bytes=100)
    for ext in (".tokens.npy", ".offsets.npy"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
    shards = TokenShards([tmp_path / "a"], wtok)
    assert shards.n_docs == 500
    for i in (0, 17, 499):
        assert np.array_equal(shards.document(i), docs[i] + 5)


def test_tokenize_min_chars_and_normalize_flag(tmp_path, wtok):
    text = tmp_path / "in.txt"
    text.write_text("w1\nw22 w3\n", encoding="utf-8")
    meta = tokenize_text_file(text, wtok, tmp_path / "x", min_chars=3, normalize=True)
    assert meta["n_docs"] == 1 and meta["n_blank_lines"] == 1 and meta["normalize"] is True
    assert TokenShards([tmp_path / "x"]).document(0).tolist() == [27, 8]


@pytest.mark.parametrize("data", [b"", b"\n  \n\t\n"])
def test_empty_file_raises_naming_file(tmp_path, wtok, data):
    text = tmp_path / "empty.txt"
    text.write_bytes(data)
    with pytest.raises(InputError, match="empty.txt") as err:
        tokenize_text_file(text, wtok, tmp_path / "out")
    assert err.value.path == str(text)
    assert files_in(tmp_path) == ["empty.txt"]  # no output, no temporary left behind


def test_non_utf8_raises_with_line_and_leaves_nothing(tmp_path, wtok):
    text = tmp_path / "latin1.txt"
    text.write_bytes(b"w1 w2\nw3\ncaf\xe9 w4\nw5\n")
    with pytest.raises(InputError, match=r"latin1\.txt:3: not valid UTF-8") as err:
        tokenize_text_file(text, wtok, tmp_path / "out" / "x", batch_lines=1)
    assert err.value.line == 3
    assert files_in(tmp_path / "out") == []


def test_missing_file_raises(tmp_path, wtok):
    with pytest.raises(InputError, match="does not exist"):
        tokenize_text_file(tmp_path / "nope.txt", wtok, tmp_path / "out")


@pytest.mark.integration
def test_real_text_round_trips_with_minilm_tokenizer(tmp_path, shared_data, minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    text_dir = shared_data / "text"
    lines = (text_dir / "wikipedia-summaries" / "en.txt").read_text("utf-8").splitlines()[:150]
    lines += (text_dir / "leipzig-sentences" / "en.txt").read_text("utf-8").splitlines()[:150]
    lines = [line for line in lines if line.strip()]
    text = tmp_path / "real.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = tokenize_text_file(text, tok, tmp_path / "tok" / "real", batch_lines=64)
    assert meta["n_docs"] == len(lines)
    assert meta["tokenizer"]["lowercase"] is True
    assert meta["tokenizer"]["vocab_size"] == 30522
    shards = TokenShards.from_dir(tmp_path / "tok", tok)
    starts, lengths = shards.doc_bounds()
    assert starts[0] == 0 and starts[-1] + lengths[-1] == shards.n_tokens

    def squash(s: str) -> str:  # BERT uncased lower-cases, strips accents, re-spaces
        s = unicodedata.normalize("NFD", s.lower())
        return "".join(c for c in s if not c.isspace() and unicodedata.category(c) != "Mn")

    exact = 0
    for i, line in enumerate(lines):
        ids = shards.document(i)
        assert ids.tolist() == tok(line, add_special_tokens=False)["input_ids"]
        assert not np.isin(ids, tok.all_special_ids[1:]).any()  # no [CLS]/[SEP]/[PAD]/[MASK]
        exact += squash(tok.decode(ids.tolist())) == squash(line)
    assert exact >= 0.97 * len(lines)


@pytest.mark.integration
def test_normalize_applies_authors_normaliser(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    text = tmp_path / "n.txt"
    text.write_text("a\u2013b \u201cquoted\u201d it\u2019s\n", encoding="utf-8")
    tokenize_text_file(text, tok, tmp_path / "n", normalize=True)
    expected = tok('a-b "quoted" it\'s', add_special_tokens=False)["input_ids"]
    assert TokenShards([tmp_path / "n"]).document(0).tolist() == expected


# --------------------------------------------------------------------------- splitting


def test_split_is_line_aligned_and_matches_gnu_split(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["x" * int(n) for n in rng.integers(0, 120, size=400)]
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pieces = split_text_file(text, 7, tmp_path / "split")
    assert [p.name for p in pieces] == [f"corpus.{k:03d}.txt" for k in range(7)]
    blobs = [p.read_bytes() for p in pieces]
    assert b"".join(blobs) == text.read_bytes()
    assert all(b.endswith(b"\n") and b for b in blobs)
    assert max(map(len, blobs)) < 2 * min(map(len, blobs))
    again = split_text_file(text, 7, tmp_path / "split2")
    assert [p.read_bytes() for p in again] == blobs
    if shutil.which("split"):
        gnu = tmp_path / "gnu"
        gnu.mkdir()
        subprocess.run(
            ["split", "-n", "l/7", "-d", "-a", "3", str(text), str(gnu / "c.")], check=True
        )
        assert [(gnu / f"c.{k:03d}").read_bytes() for k in range(7)] == blobs


def test_split_refuses_empty_pieces(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(InputError, match="too few lines"):
        split_text_file(text, 5, tmp_path / "split")
    assert not (tmp_path / "split").exists()


def test_split_then_tokenize_equals_whole_file(tmp_path, wtok):
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, N_WORDS, size=rng.integers(1, 60)) for _ in range(300)]
    whole = make_source(tmp_path, "whole", docs, wtok, n_shards=1)
    parts = make_source(tmp_path, "parts", docs, wtok, n_shards=4)
    assert len(parts.prefixes) == 4 and parts.n_docs == whole.n_docs == 300
    assert np.array_equal(parts.tokens_at(0, parts.n_tokens), np.concatenate(docs) + 5)
    # A read across a shard edge is stitched together.
    edge = int(parts.token_starts[1])
    assert np.array_equal(parts.tokens_at(edge - 3, 6), whole.tokens_at(edge - 3, 6))
    assert np.array_equal(parts.doc_bounds()[0], whole.doc_bounds()[0])
    assert np.array_equal(parts.document(150), docs[150] + 5)
    # Ranks take contiguous parts of the sorted shards, like np.array_split.
    prefixes = find_shards(tmp_path / "parts-tok")
    assert shards_for_rank(prefixes, 1, 3) == prefixes[2:3]
    assert (
        TokenShards.from_dir(tmp_path / "parts-tok", rank=0, world_size=2).prefixes
        == (prefixes[:2])
    )
    with pytest.raises(InputError, match="gets no shard"):
        shards_for_rank(prefixes, 4, 5)


def test_token_shards_pickle_without_arrays(tmp_path, wtok):
    src = make_source(tmp_path, "p", [list(range(3000))] * 10, wtok)
    blob = pickle.dumps(src)
    assert len(blob) < 20_000  # paths and metadata, not 30k tokens
    again = pickle.loads(blob)
    assert np.array_equal(again.tokens_at(100, 50), src.tokens_at(100, 50))


def test_tokenizer_mismatch_raises_with_both_identities(tmp_path, wtok):
    make_source(tmp_path, "a", [[1, 2, 3]], wtok)
    other = word_tokenizer(N_WORDS + 1)
    meta = json.loads((tmp_path / "a-tok" / "a.json").read_text())
    check_tokenizer(meta, wtok)
    with pytest.raises(InputError) as err:
        check_tokenizer(meta, other)
    message = str(err.value)
    assert "vocab_size" in message and "vocab_sha256" in message
    assert tokenizer_identity(wtok)["vocab_sha256"][:12] in message
    assert tokenizer_identity(other)["vocab_sha256"][:12] in message
    with pytest.raises(InputError, match="different tokenizer"):
        TokenShards.from_dir(tmp_path / "a-tok", other)
    # Shards of one source, or two sources, tokenised differently cannot be mixed.
    (tmp_path / "b.txt").write_text("w1 w2\n", encoding="utf-8")
    tokenize_text_file(tmp_path / "b.txt", other, tmp_path / "a-tok" / "b")
    with pytest.raises(InputError, match="different tokenizers"):
        TokenShards.from_dir(tmp_path / "a-tok")


def test_corrupt_shard_is_rejected(tmp_path, wtok):
    make_source(tmp_path, "c", [[1, 2, 3], [4]], wtok)
    meta_path = tmp_path / "c-tok" / "c.json"
    meta = json.loads(meta_path.read_text())
    meta["n_tokens"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not match"):
        TokenShards.from_dir(tmp_path / "c-tok")


# --------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def sources(tmp_path_factory, wtok):
    """small: 30 chunks of 256; big: 1200 chunks; docs: one repeated word per document."""
    tmp = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(3)
    small = make_source(tmp, "small", np.arange(30 * 256).reshape(60, 128) % 1000, wtok)
    big_ids = 1000 + rng.integers(0, 1000, size=(1200, 256))
    big = make_source(tmp, "big", big_ids, wtok, n_shards=3)
    lengths = rng.integers(1, 700, size=300)
    docs = make_source(tmp, "docs", [[2000 + d] * int(n) for d, n in enumerate(lengths)], wtok)
    return {"small": small, "big": big, "docs": docs}


def test_code_faithful_chunks_are_full_windows_at_epoch_offset(sources):
    src = sources["big"]
    sampler = ChunkSampler({"big": src}, chunk_length=256, seed=1, epoch_size=25)
    seen_offsets = set()
    for _ in range(500):
        c = next(sampler)
        offset = int(sampler.epoch_offsets(c.index // 25)[0])
        seen_offsets.add(offset)
        assert len(c.tokens) == 256 and c.tokens.dtype == np.int32
        assert (c.start - offset) % 256 == 0 and c.start + 256 <= src.n_tokens
        assert np.array_equal(c.tokens, src.tokens_at(c.start, 256))
    assert len(seen_offsets) >= 15  # one offset per epoch, re-drawn in [0, 256)
    offsets = np.concatenate([sampler.epoch_offsets(e) for e in range(300)])
    assert offsets.min() >= 0 and offsets.max() < 256 and len(set(offsets.tolist())) > 150


def test_windows_ignore_document_boundaries_by_default(sources):
    sampler = ChunkSampler([sources["docs"]], seed=2)
    assert any(len(set(next(sampler).tokens.tolist())) > 1 for _ in range(200))


def test_respect_doc_boundaries_keeps_chunks_inside_documents(sources):
    src = sources["docs"]
    starts, lengths = src.doc_bounds()
    sampler = ChunkSampler([src], respect_doc_boundaries=True, min_doc_tokens=32, seed=3)
    drawn = set()
    for _ in range(2000):
        c = next(sampler)
        doc = int(np.searchsorted(starts, c.start, side="right")) - 1
        drawn.add(doc)
        assert c.start + len(c.tokens) <= starts[doc] + lengths[doc]
        assert 1 <= len(c.tokens) <= 256 and lengths[doc] >= 32
        assert np.all(c.tokens == 2005 + doc)  # the document's own word, nothing else
    assert len(drawn) > 0.9 * np.sum(lengths >= 32)
    # Windows tile each kept document exactly, in nearly equal pieces of <= 256 tokens.
    w_start, w_len = sampler.windows(0)
    kept = np.flatnonzero(lengths >= 32)
    assert len(w_start) == int(np.sum(-(-lengths[kept] // 256)))
    ends = w_start + w_len
    for d in kept:
        mine = (w_start >= starts[d]) & (ends <= starts[d] + lengths[d])
        assert w_len[mine].sum() == lengths[d]
        assert w_len[mine].max() - w_len[mine].min() <= 1
        assert w_len[mine].min() >= min(lengths[d], 128)


def _source_share(sampler, n=4000) -> float:
    return float(np.mean([sampler.chunk(i).source == 0 for i in range(n)]))


def test_mixing_coefficient_zero_is_uniform_over_sources(sources):
    sampler = ChunkSampler({"small": sources["small"], "big": sources["big"]}, seed=4)
    assert sampler.n_chunks.tolist() == [30, 1200]
    assert np.allclose(sampler.probs, [0.5, 0.5])
    assert abs(_source_share(sampler) - 0.5) < 5 * np.sqrt(0.25 / 4000)


def test_mixing_coefficient_one_is_proportional(sources):
    sampler = ChunkSampler(
        {"small": sources["small"], "big": sources["big"]}, sampling_coefficient=1.0, seed=5
    )
    p = 30 / 1230
    assert np.allclose(sampler.probs, [p, 1 - p])
    assert abs(_source_share(sampler) - p) < 5 * np.sqrt(p * (1 - p) / 4000)
    half = ChunkSampler(
        {"small": sources["small"], "big": sources["big"]}, sampling_coefficient=0.5
    )
    assert np.allclose(half.probs[0], np.sqrt(p) / (np.sqrt(p) + np.sqrt(1 - p)))


def _fingerprint(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(np.int64([c.index, c.source, c.start]).tobytes() + c.tokens.tobytes())
    return h.hexdigest()


def test_sampler_state_round_trip(sources):
    mix = {"small": sources["small"], "big": sources["big"]}
    a = ChunkSampler(mix, seed=6, epoch_size=40)
    [next(a) for _ in range(50)]
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON checkpoint
    expected = [next(a) for _ in range(50)]
    b = ChunkSampler(mix, seed=6, epoch_size=40)
    b.load_state_dict(state)
    assert _fingerprint(next(b) for _ in range(50)) == _fingerprint(expected)
    with pytest.raises(InputError, match="seed"):
        ChunkSampler(mix, seed=7, epoch_size=40).load_state_dict(state)


def test_seed_and_rank_change_the_stream(sources):
    mix = {"small": sources["small"], "big": sources["big"]}

    def first(**kw):
        return _fingerprint(ChunkSampler(mix, **kw).chunk(i) for i in range(50))

    assert first(seed=0) == first(seed=0)
    assert len({first(seed=0), first(seed=1), first(seed=0, rank=1)}) == 3


def test_same_seed_same_bytes_in_another_process(sources, tmp_path):
    small, big = sources["small"], sources["big"]
    script = textwrap.dedent(
        f"""
        import hashlib, numpy as np
        from contriever_repro.training.shards import ChunkSampler, TokenShards
        mix = {{"small": TokenShards({[str(p) for p in small.prefixes]!r}),
               "big": TokenShards({[str(p) for p in big.prefixes]!r})}}
        s = ChunkSampler(mix, seed=11, rank=2, epoch_size=30)
        h = hashlib.sha256()
        for c in (next(s) for _ in range(200)):
            h.update(np.int64([c.index, c.source, c.start]).tobytes() + c.tokens.tobytes())
        print(h.hexdigest())
        """
    )
    lib = os.path.dirname(os.path.dirname(contriever_repro.__file__))
    env = dict(os.environ, PYTHONPATH=lib, PYTHONHASHSEED="123")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    here = ChunkSampler({"small": small, "big": big}, seed=11, rank=2, epoch_size=30)
    assert out.stdout.strip() == _fingerprint(next(here) for _ in range(200))


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batches_identical_for_any_worker_count_and_resume(sources, wtok):
    mix = {"small": sources["small"], "big": sources["big"]}
    views = ViewMaker.from_tokenizer(wtok)
    ds = PretrainBatches(ChunkSampler(mix, seed=8), views, batch_size=4, pad_id=0)
    serial = _batches(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0), 6)
    parallel = _batches(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2), 6)
    assert [b["index"] for b in serial] == [b["index"] for b in parallel] == list(range(6))
    for s, p in zip(serial, parallel, strict=True):
        for key in ("q_input_ids", "q_attention_mask", "k_input_ids", "k_attention_mask"):
            assert torch.equal(s[key], p[key])
    resumed = PretrainBatches(ChunkSampler(mix, seed=8), views, batch_size=4, start_batch=3)
    first = next(iter(resumed))
    assert first["index"] == 3 and torch.equal(first["k_input_ids"], serial[3]["k_input_ids"])
    b = serial[0]
    assert b["q_input_ids"].shape[0] == 4 and b["sources"].tolist() == [
        ChunkSampler(mix, seed=8).chunk(i).source for i in range(4)
    ]
    lengths = b["q_attention_mask"].sum(1)
    assert torch.all(b["q_input_ids"][:, 0] == 2)  # [CLS]
    assert torch.all(b["q_input_ids"][torch.arange(4), lengths - 1] == 3)  # [SEP] last


def test_sampler_rejects_bad_sources(sources, tmp_path, wtok):
    tiny = make_source(tmp_path, "tiny", [list(range(300))], wtok)
    with pytest.raises(InputError, match="fewer than"):
        ChunkSampler({"tiny": tiny})
    with pytest.raises(InputError, match="no document of at least"):
        ChunkSampler({"tiny": tiny}, respect_doc_boundaries=True, min_doc_tokens=500)
    other = word_tokenizer(N_WORDS + 1)
    odd = make_source(tmp_path, "odd", [list(range(600))], other)
    with pytest.raises(InputError, match="tokenised with"):
        ChunkSampler({"big": sources["big"], "odd": odd})
