"""The demo's tiny BERT: a reproducible, offline-loadable BERT checkpoint."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from contriever_repro.data.demo_world import DemoWorld
from contriever_repro.errors import InputError
from contriever_repro.models.tiny_bert import (
    SPECIAL_TOKENS,
    build_tiny_bert,
    count_words,
    learn_wordpiece_vocab,
)

VOCAB = 1500


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("text") / "pre.txt"
    DemoWorld(3).write_pretraining_text(path, 800)
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, texts) -> Path:
    start = time.perf_counter()
    out = build_tiny_bert(texts, tmp_path_factory.mktemp("m") / "tiny", vocab_size=VOCAB)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"build took {elapsed:.1f} s"
    return out


def test_loads_offline_and_encodes(tiny):
    tok = AutoTokenizer.from_pretrained(tiny, local_files_only=True)
    model = AutoModel.from_pretrained(tiny, local_files_only=True)
    assert model.config.model_type == "bert" and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tok) <= VOCAB
    assert tok.pad_token_id == 0
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == list(SPECIAL_TOKENS)

    batch = tok(["Hello Demo world, again!", "x"], padding=True, return_tensors="pt")
    pieces = tok.convert_ids_to_tokens(batch["input_ids"][0])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert "[UNK]" not in pieces, "every ASCII character is in the alphabet"
    assert batch["input_ids"][1].tolist()[-1] == tok.pad_token_id
    assert tok.decode(batch["input_ids"][0], skip_special_tokens=True) == "hello demo world, again!"
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert out.shape == (2, batch["input_ids"].shape[1], 64)
    assert torch.isfinite(out).all()


def test_vocabulary_covers_the_corpus_words(tiny, texts):
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok(texts[:50])["input_ids"]
    unk = tok.unk_token_id
    assert all(unk not in row for row in ids)
    n_words = sum(len(t.split()) for t in texts[:50])
    n_pieces = sum(len(row) - 2 for row in ids)
    assert n_pieces < 2.0 * n_words, "whole words, not characters, for common words"


def test_same_inputs_same_bytes(tiny, texts, tmp_path):
    again = build_tiny_bert(texts, tmp_path / "again", vocab_size=VOCAB)
    names = sorted(p.name for p in tiny.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= set(names)
    for name in names:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name


def test_seed_changes_weights_not_vocab_and_leaves_global_rng(texts, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_bert(texts[:200], tmp_path / "a", vocab_size=500, seed=1)
    assert torch.equal(torch.rand(3), expected), "the caller's RNG stream is untouched"
    b = build_tiny_bert(texts[:200], tmp_path / "b", vocab_size=500, seed=2)
    assert (a / "vocab.txt").read_bytes() == (b / "vocab.txt").read_bytes()
    wa = AutoModel.from_pretrained(a).embeddings.word_embeddings.weight
    wb = AutoModel.from_pretrained(b).embeddings.word_embeddings.weight
    assert not torch.equal(wa, wb)


def test_rebuild_replaces_folder_and_leaves_no_temp(texts, tmp_path):
    out = tmp_path / "m"
    build_tiny_bert(texts[:100], out, vocab_size=300, hidden_size=32)
    build_tiny_bert(texts[:100], out, vocab_size=300, hidden_size=16, num_heads=2)
    assert AutoModel.from_pretrained(out).config.hidden_size == 16
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_vocabulary_is_the_same_in_other_processes(texts, tmp_path):
    """Hash-map order (PYTHONHASHSEED) never leaks into the vocabulary."""
    path = tmp_path / "texts.json"
    path.write_text(json.dumps(texts[:300]), encoding="utf-8")
    code = (
        "import json, sys; from contriever_repro.models.tiny_bert import *; "
        "t = json.load(open(sys.argv[1])); "
        "print(json.dumps(learn_wordpiece_vocab(count_words(t), 800)))"
    )
    expected = learn_wordpiece_vocab(count_words(texts[:300]), 800)
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        assert json.loads(run.stdout) == expected


def test_learner_is_deterministic_and_merges_frequent_pairs():
    counts = {"lower": 5, "lowest": 3, "newer": 6, "wider": 2, "low": 7}
    vocab = learn_wordpiece_vocab(counts, 40, initial_alphabet=string.ascii_lowercase[:3])
    assert vocab == learn_wordpiece_vocab(dict(reversed(counts.items())), 40, 2, "abc")
    assert vocab[:5] == list(SPECIAL_TOKENS)
    assert {"a", "##a", "l", "##o", "low", "##er"} <= set(vocab)
    assert len(vocab) == len(set(vocab)) <= 40


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="divisible"):
        build_tiny_bert(["a b c"], tmp_path / "x", hidden_size=10, num_heads=3)
    with pytest.raises(InputError, match="no text"):
        build_tiny_bert([], tmp_path / "x")
    assert not (tmp_path / "x").exists()
