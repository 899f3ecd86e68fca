"""Encoding: input order is kept, chunks resume, shards and metadata round-trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contriever_repro.errors import InputError
from contriever_repro.io import write_table
from contriever_repro.models.spec import ModelSpec, load_encoder
from contriever_repro.retrieval import encode as enc

TEXTS = [
    "short",
    "a much longer text about retrieval with many words in it",
    "medium length text here",
    "x",
    "another fairly long sentence for the batch",
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    spec = ModelSpec(name="minilm", source=str(minilm_path), normalize=True)
    return spec, *load_encoder(spec)


def _encode(minilm, texts, **kw):
    spec, tok, model = minilm
    return enc.encode_texts(
        texts, tok, model, max_length=64, batch_size=2, pooling="mean", l2_normalize=True, **kw
    )


def test_output_follows_input_order_whatever_the_batching(minilm):
    together = _encode(minilm, TEXTS)
    one_by_one = np.concatenate([_encode(minilm, [t]) for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_resume_reuses_finished_chunks(minilm, tmp_path, monkeypatch):
    full = _encode(minilm, TEXTS, resume_dir=tmp_path, chunk_size=2)
    chunks = sorted(tmp_path.glob("chunk-*.npy"))
    assert len(chunks) == 3
    chunks[-1].unlink()  # as if the job died while writing the last chunk
    calls = []
    real = enc._encode_sorted
    monkeypatch.setattr(
        enc, "_encode_sorted", lambda texts, **kw: calls.append(len(texts)) or real(texts, **kw)
    )
    again = _encode(minilm, TEXTS, resume_dir=tmp_path, chunk_size=2)
    assert calls == [1]  # only the missing last chunk (5 texts, chunks of 2) was encoded
    np.testing.assert_allclose(full, again, atol=1e-6)


def test_bf16_autocast_is_close_to_fp32(minilm):
    fp32 = _encode(minilm, TEXTS)
    bf16 = _encode(minilm, TEXTS, dtype="bf16")
    cos = (fp32 * bf16).sum(axis=1)
    assert cos.min() > 0.99


def test_fp16_on_cpu_is_refused(minilm):
    with pytest.raises(InputError, match="fp16 encoding needs a GPU"):
        _encode(minilm, TEXTS, dtype="fp16")


def test_embedding_shards_round_trip(tmp_path):
    emb = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    spec = ModelSpec(name="m", source="x")
    enc.save_embeddings(
        tmp_path / "corpus.0-of-1", ["a", "b", "c"], emb, enc.embedding_meta(spec, "passage")
    )
    ids, back, meta = enc.load_embeddings(tmp_path / "corpus.0-of-1")
    assert ids == ["a", "b", "c"] and np.array_equal(back, emb)
    assert meta["pooling"] == "mean" and meta["dim"] == 4 and meta["l2_normalize"] is False


def test_missing_shard_file_is_named(tmp_path):
    with pytest.raises(InputError, match="corpus.0-of-1.npy"):
        enc.load_embeddings(tmp_path / "corpus.0-of-1")


def test_passage_and_query_texts_follow_the_spec():
    spec = ModelSpec(name="m", source="x", lowercase=True, query_prefix="query: ")
    corpus = pd.DataFrame({"doc_id": ["1", "2"], "title": ["T", ""], "text": ["Body", "Only"]})
    assert enc.passage_texts(corpus, spec) == ["t body", "only"]
    queries = pd.DataFrame({"query_id": ["q"], "text": ["Hello"]})
    assert enc.query_texts(queries, spec) == ["query: hello"]


def test_chunks_from_another_configuration_are_discarded(minilm, tmp_path):
    first = _encode(minilm, TEXTS, resume_dir=tmp_path, resume_key="model-a", chunk_size=2)
    stale = sorted(tmp_path.glob("chunk-*.npy"))[0]
    np.save(stale, np.zeros_like(np.load(stale)))  # poison: would show up if reused
    again = _encode(minilm, TEXTS, resume_dir=tmp_path, resume_key="model-b", chunk_size=2)
    np.testing.assert_allclose(first, again, atol=1e-6)


# ------------------------------------------------------------- the script's device

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "encode.py"


def _run_script(*args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "lib"), "CUDA_VISIBLE_DEVICES": ""}
    spec = json.dumps({"name": "m", "source": "facebook/contriever"})
    cmd = [sys.executable, str(SCRIPT), "queries", "--spec", spec,
           "--input", str(tmp_path / "queries.parquet"), "--out-prefix", str(tmp_path / "q"),
           *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_gpu_job_without_cuda_fails_at_once_before_any_work(tmp_path):
    proc = _run_script("--device", "auto", "--gpus", "1", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "given 1 GPU(s)" in proc.stderr and "CUDA is not visible" in proc.stderr
    assert "refusing to encode on CPU" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing read, nothing written


def test_encoding_job_never_loads_from_the_hub(tmp_path, minilm_path):
    write_table(
        pd.DataFrame({"query_id": ["q1"], "text": ["what is x"]}),
        tmp_path / "queries.parquet",
        "queries",
    )
    proc = _run_script("--device", "auto", "--gpus", "0", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "'facebook/contriever' is not a local folder" in proc.stderr
    # With the prefetched (here: a real local) folder it encodes, on CPU as the config says.
    proc = _run_script(
        "--device", "cpu", "--gpus", "0", "--source", str(minilm_path), tmp_path=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "q.json").read_text())
    assert meta["device"] == "cpu"
    assert np.load(tmp_path / "q.npy").shape == (1, 384)


# ------------------------------------------------------------------ long documents


def _long_real_texts(shared_data) -> list[str]:
    """Real text joined into documents far longer than 512 tokens, in several scripts."""
    wiki = shared_data / "text" / "wikipedia-summaries"
    leipzig = shared_data / "text" / "leipzig-sentences"
    docs = []
    for path in (wiki / "en.txt", wiki / "fr.txt", wiki / "es.txt"):
        lines = path.read_text(encoding="utf-8").splitlines()
        docs.append(" ".join(lines[:60]))  # ~60 KB
        docs.append("\n".join(lines[100:160]))  # newlines, spaces inside lines
    for lang in ("de", "ru", "ar", "zh", "ja", "ko", "th"):
        lines = (leipzig / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        docs.append(" ".join(lines[:300]))
    return docs


def _adversarial_texts() -> list[str]:
    long_word = "x" * 150  # longer than BERT's 100-character word limit: one [UNK] each
    return [
        " ".join([long_word] * 400) + " " + "retrieval " * 2000,  # cut too short at first
        ("a" + " " * 30) * 3000,  # runs of spaces
        "y" * 50_000,  # no space at all: never cut
        "word " * 20_000 + "é" * 10,
        "short text",
    ]


def test_tokenising_a_cut_gives_the_ids_of_the_whole_text(minilm, shared_data):
    _, tok, _ = minilm
    texts = _long_real_texts(shared_data) + _adversarial_texts()
    assert min(len(t) for t in texts[:-1]) > 512 * enc.CHARS_PER_TOKEN
    for max_length in (512, 128):
        whole = tok(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        bounded = enc.tokenize(tok, texts, max_length)
        assert bounded["input_ids"].equal(whole["input_ids"]), max_length
        assert bounded["attention_mask"].equal(whole["attention_mask"]), max_length


def test_the_cut_ends_before_a_space_where_the_kept_tokens_end(minilm, shared_data, monkeypatch):
    """With budgets of a few characters per token the cut lands on every kind of place,
    including a word whose pieces would complete max_length only if the word were cut."""
    _, tok, _ = minilm
    lines = (shared_data / "text" / "wikipedia-summaries" / "en.txt").read_text().splitlines()
    texts = [" ".join(lines[i : i + 3]) for i in range(0, 60, 3)]
    for chars_per_token in (2, 3, 5):
        monkeypatch.setattr(enc, "CHARS_PER_TOKEN", chars_per_token)
        for max_length in range(8, 64, 4):
            whole = tok(texts, padding=True, truncation=True, max_length=max_length)
            bounded = enc.tokenize(tok, texts, max_length)
            assert bounded["input_ids"].tolist() == whole["input_ids"], (
                chars_per_token,
                max_length,
            )


class _Spy:
    """The real tokenizer, recording the longest text it was given."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def __call__(self, texts, **kw):
        self.longest = max(self.longest, *map(len, texts))
        return self.tok(texts, **kw)

    def __getattr__(self, name):  # pad_token_id, padding_side
        return getattr(self.tok, name)


def test_megabyte_documents_are_not_tokenised_whole(minilm):
    spec, tok, model = minilm
    spy = _Spy(tok)
    doc = "dense retrieval with contrastive learning " * 25_000  # 1 MB
    enc.encode_texts([doc, doc[:-7]], spy, model, max_length=512, batch_size=2)
    assert spy.longest < 512 * enc.CHARS_PER_TOKEN + 20


def test_embeddings_do_not_change_with_the_cut(minilm, shared_data, monkeypatch):
    spec, tok, model = minilm
    wiki = (shared_data / "text" / "wikipedia-summaries" / "en.txt").read_text(encoding="utf-8")
    lines = wiki.splitlines()
    texts = [
        *TEXTS,
        lines[0],
        " ".join(lines[1:80]),  # ~80 KB
        _adversarial_texts()[0],
        " ".join(lines[200:202]),
    ]

    def run():
        return enc.encode_texts(texts, tok, model, max_length=256, batch_size=3)

    bounded = run()
    monkeypatch.setattr(enc, "CHARS_PER_TOKEN", 10**9)  # no cut: the whole texts
    whole = run()
    assert np.array_equal(bounded, whole)


def test_token_groups_keep_count_and_padded_size_within_bounds():
    lengths = [10, 8, 8, 3, 3, 3, 1]
    assert enc.group_by_tokens(lengths, max_batch=3, max_tokens=24) == [[0, 1], [2, 3, 4], [5, 6]]
    # A text longer than the budget still gets a batch of its own.
    assert enc.group_by_tokens([50, 2], max_batch=8, max_tokens=24) == [[0], [1]]


def test_padding_rounds_up_on_the_tokenizers_side_but_not_past_max_length():
    right = enc.pad_ids([[1, 2, 3], [4]], pad_id=0, multiple=4)
    assert right["input_ids"].tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    left = enc.pad_ids([[1, 2, 3], [4]], pad_id=9, multiple=4, side="left")
    assert left["input_ids"].tolist() == [[9, 1, 2, 3], [9, 9, 9, 4]]
    assert enc.pad_ids([[1] * 6], 0, multiple=8, max_length=6)["input_ids"].shape == (1, 6)


def test_token_batches_hold_every_text_once_within_the_token_budget(minilm, shared_data):
    _, tok, _ = minilm
    lines = (shared_data / "text" / "wikipedia-summaries" / "en.txt").read_text().splitlines()
    texts = [" ".join(lines[i : i + (i % 7) + 1]) for i in range(300)] + TEXTS
    seen = []
    for rows, batch in enc.token_batches(texts, tok, max_length=128, batch_size=4):
        n, width = batch["input_ids"].shape
        assert n == len(rows) <= 4 * enc.BLOCK_BATCHES
        assert width % enc.PAD_MULTIPLE == 0 or width == 128
        longest = int(batch["attention_mask"].sum(dim=1).max())
        assert n == 1 or n * longest <= 4 * 128
        assert width - longest < enc.PAD_MULTIPLE
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(texts)))


def test_tokenising_ahead_in_a_thread_gives_the_same_embeddings(minilm, shared_data, monkeypatch):
    spec, tok, model = minilm
    lines = (shared_data / "text" / "wikipedia-summaries" / "en.txt").read_text().splitlines()
    texts = [" ".join(lines[i : i + (i % 5) + 1]) for i in range(60)]
    kw = dict(max_length=96, batch_size=4, pooling="mean", l2_normalize=True, dtype="fp32")
    inline = enc._encode_sorted(texts, tok, model, progress=None, prefetch=0, **kw)
    ahead = enc._encode_sorted(texts, tok, model, progress=None, prefetch=2, **kw)
    assert np.array_equal(inline, ahead)
    # Padding to a multiple of 8 and grouping by tokens only change float rounding.
    monkeypatch.setattr(enc, "PAD_MULTIPLE", 1)
    plain = enc._encode_sorted(texts, tok, model, progress=None, prefetch=0, max_tokens=10**9, **kw)
    np.testing.assert_allclose(inline, plain, atol=2e-6)


def test_a_failing_tokenizer_thread_raises_in_the_encoder():
    def items():
        yield 1
        raise InputError("bad text at row 2")

    got = []
    with pytest.raises(InputError, match="bad text at row 2"):
        for x in enc.in_background(items(), depth=1):
            got.append(x)
    assert got == [1]


def test_a_consumer_that_stops_early_stops_the_thread():
    import threading

    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    stream = enc.in_background(items(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert not any(t.name == "tokenize" and t.is_alive() for t in threading.enumerate())
    assert len(produced) < 10
