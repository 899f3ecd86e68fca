"""Views and token noise for pre-training pairs: exact semantics on hand-made chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contriever_repro.training.augment import (
    ViewMaker,
    add_special_tokens,
    augment,
    collate,
    make_views,
    random_crop,
    replaceable_ids,
)

CLS, SEP, MASK = 101, 102, 103
CHUNK = np.arange(1000, 1256, dtype=np.int32)  # 256 distinct ids: positions are recoverable


def _start_len(view: np.ndarray) -> tuple[int, int]:
    """Where a contiguous view of CHUNK starts, and how long it is."""
    start = int(view[0]) - 1000
    assert np.array_equal(view, CHUNK[start : start + len(view)]), "view is not contiguous"
    return start, len(view)


def test_crop_lengths_follow_floor_of_256_r():
    rng = np.random.default_rng(0)
    lengths, starts = [], []
    for _ in range(20000):
        start, length = _start_len(random_crop(CHUNK, 0.05, 0.5, rng))
        lengths.append(length)
        starts.append(start)
        assert 0 <= start <= 256 - length
    lengths = np.array(lengths)
    # floor(256·0.05) = 12 and floor(256·0.5) = 128; r < 0.5 almost surely, so max 127.
    assert lengths.min() == 12
    assert 126 <= lengths.max() <= 128
    # r uniform → L uniform on 12..127: the mean is close to (12 + 127) / 2.
    assert abs(lengths.mean() - 69.5) < 1.0
    # Start uniform on [0, 256 − L]: both ends are reached and the relative start averages 1/2.
    starts = np.array(starts)
    assert np.any(starts == 0) and np.any(starts == 256 - lengths)
    assert abs(np.mean(starts / (256 - lengths)) - 0.5) < 0.02


def test_crop_of_short_chunk_keeps_at_least_one_token():
    rng = np.random.default_rng(1)
    for _ in range(200):
        assert len(random_crop(np.array([7, 8, 9]), 0.05, 0.1, rng)) == 1
    with pytest.raises(ValueError):
        random_crop(np.array([], dtype=np.int32), 0.05, 0.5, rng)
    with pytest.raises(ValueError):
        random_crop(CHUNK, 0.6, 0.5, rng)


def test_crop_views_are_independent():
    rng = np.random.default_rng(2)
    q, k = zip(
        *(
            tuple(_start_len(v) for v in make_views(CHUNK, "crop", rng, 0.05, 0.5))
            for _ in range(5000)
        ),
        strict=True,
    )
    q, k = np.array(q), np.array(k)
    # Identical (start, length) for both views is rare; lengths and starts are uncorrelated.
    assert np.mean(np.all(q == k, axis=1)) < 0.01
    assert np.mean(q[:, 1] == k[:, 1]) < 0.03
    assert abs(np.corrcoef(q[:, 1], k[:, 1])[0, 1]) < 0.05
    assert abs(np.corrcoef(q[:, 0], k[:, 0])[0, 1]) < 0.05
    # Symmetric: query and key lengths have the same distribution.
    assert abs(q[:, 1].mean() - k[:, 1].mean()) < 1.5


def test_ict_key_is_exactly_the_complement_of_the_span():
    rng = np.random.default_rng(3)
    for _ in range(2000):
        query, key = make_views(CHUNK, "ict", rng, 0.05, 0.5)
        start, length = _start_len(query)
        assert 12 <= length <= 128
        assert np.array_equal(key, np.concatenate([CHUNK[:start], CHUNK[start + length :]]))
        assert len(query) + len(key) == len(CHUNK)
    tiny = np.array([5, 6])
    for _ in range(50):
        query, key = make_views(tiny, "ict", rng)
        assert len(query) == 1 and len(key) == 1 and set(query) | set(key) == {5, 6}


def test_ict_keep_prob_keeps_span_in_key():
    rng = np.random.default_rng(4)
    query, key = make_views(CHUNK, "ict", rng, ict_keep_prob=1.0)
    assert np.array_equal(key, CHUNK)
    kept = sum(len(make_views(CHUNK, "ict", rng, ict_keep_prob=0.1)[1]) == 256 for _ in range(4000))
    assert abs(kept / 4000 - 0.1) < 0.025


def test_unknown_method_or_augmentation_raises():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown view method"):
        make_views(CHUNK, "cloze", rng)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(CHUNK, "swap", 0.1, rng)
    with pytest.raises(ValueError, match="vocab_ids"):
        augment(CHUNK, "replace", 0.1, rng)
    with pytest.raises(ValueError, match="mask_id"):
        augment(CHUNK, "mask", 0.1, rng)
    with pytest.raises(ValueError, match="vocab_ids"):
        ViewMaker(CLS, SEP, augmentation="replace")


N = 100_000
P = 0.1
TOL = 5 * np.sqrt(P * (1 - P) / N)  # five binomial standard deviations


def test_delete_rate_and_order():
    tokens = np.arange(N, dtype=np.int64)
    out = augment(tokens, "delete", P, np.random.default_rng(5))
    assert abs(1 - len(out) / N - P) < TOL
    assert np.all(np.diff(out) > 0)  # survivors keep their order
    assert len(augment(tokens, "delete", 1.0, np.random.default_rng(0))) == 0
    assert np.array_equal(augment(tokens, "none", P, np.random.default_rng(0)), tokens)


def test_replace_rate_and_vocabulary():
    vocab = np.arange(2000, 3000)
    tokens = np.full(N, 7, dtype=np.int64)
    out = augment(tokens, "replace", P, np.random.default_rng(6), vocab_ids=vocab)
    changed = out != 7
    assert abs(changed.mean() - P) < TOL
    assert set(np.unique(out[changed])) <= set(vocab.tolist())
    assert len(np.unique(out[changed])) > 950  # uniform over the whole list
    assert np.all(tokens == 7)  # input untouched


def test_mask_and_shuffle():
    tokens = np.arange(N, dtype=np.int64) + 1000
    out = augment(tokens, "mask", P, np.random.default_rng(7), mask_id=MASK)
    hit = out != tokens
    assert abs(hit.mean() - P) < TOL
    assert np.all(out[hit] == MASK)
    shuffled = augment(tokens, "shuffle", P, np.random.default_rng(8))
    assert np.array_equal(np.sort(shuffled), tokens)
    assert 0.05 < np.mean(shuffled != tokens) <= P + TOL


@pytest.mark.parametrize("kind", ["delete", "replace", "mask", "shuffle"])
def test_special_tokens_survive_every_augmentation(kind):
    maker = ViewMaker(
        CLS, SEP, augmentation=kind, prob=0.9, vocab_ids=np.arange(2000, 3000), mask_id=MASK
    )
    rng = np.random.default_rng(9)
    for _ in range(300):
        for view in maker(CHUNK, rng):
            assert view[0] == CLS and view[-1] == SEP
            assert not np.isin(view[1:-1], [CLS, SEP]).any()
    # Even a view whose every token was deleted still carries both special tokens.
    assert np.array_equal(add_special_tokens(np.array([], dtype=np.int32), CLS, SEP), [CLS, SEP])


def test_view_maker_default_is_contriever_recipe():
    maker = ViewMaker(CLS, SEP)
    assert maker.config()["method"] == "crop"
    assert (maker.ratio_min, maker.ratio_max, maker.augmentation, maker.prob) == (
        0.05,
        0.5,
        "delete",
        0.1,
    )
    rng = np.random.default_rng(10)
    lengths = [len(v) - 2 for _ in range(2000) for v in maker(CHUNK, rng)]
    # Crop mean 69.5 tokens, then 10% deleted.
    assert abs(np.mean(lengths) - 69.5 * 0.9) < 1.5


def test_replaceable_ids_exclude_special_and_unused(minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    ids = replaceable_ids(tok)
    names = tok.convert_ids_to_tokens(ids.tolist())
    assert not set(ids.tolist()) & set(tok.all_special_ids)
    assert not any(n.startswith("[unused") for n in names)
    # bert-base-uncased WordPiece: 30522 − 5 special − 994 [unused*] tokens.
    assert len(ids) == 30522 - 5 - 994
    maker = ViewMaker.from_tokenizer(tok, augmentation="replace", prob=0.5)
    assert (maker.cls_id, maker.sep_id, maker.mask_id) == (101, 102, 103)
    q, k = maker(np.arange(2000, 2256), np.random.default_rng(0))
    assert set(q[1:-1].tolist()) <= set(ids.tolist())


def test_collate_pads_right_and_separately():
    pairs = [
        (np.array([CLS, 5, SEP]), np.array([CLS, SEP])),
        (np.array([CLS, SEP]), np.array([CLS, 6, 7, 8, SEP])),
    ]
    out = collate(pairs, pad_id=0)
    assert out["q_input_ids"].dtype == torch.long
    assert out["q_input_ids"].tolist() == [[CLS, 5, SEP], [CLS, SEP, 0]]
    assert out["q_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["k_input_ids"].tolist() == [[CLS, SEP, 0, 0, 0], [CLS, 6, 7, 8, SEP]]
    assert out["k_attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
