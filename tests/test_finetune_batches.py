"""Fine-tuning batches: key layout, negative sampling, rank slices and exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from contriever_repro.errors import InputError
from contriever_repro.models.tiny_bert import SPECIAL_TOKENS, build_tokenizer
from contriever_repro.training.finetune_batches import (
    FinetuneBatches,
    TrainingExamples,
    steps_for_epochs,
)

N_QUERIES, N_PASSAGES = 12, 40


@pytest.fixture(scope="module")
def tokenizer():
    words = [f"q{i}" for i in range(N_QUERIES)] + [f"p{k}" for k in range(N_PASSAGES)]
    return build_tokenizer(list(SPECIAL_TOKENS) + words + ["-", "a", "b", "title"])


def _tables(n_queries=N_QUERIES, n_passages=N_PASSAGES, hard=None):
    """Query i has positive p_i (and p_{i+20} for even i); hard negatives `hard(i)`."""
    queries = pd.DataFrame(
        {
            "query_id": [f"Q{i}" for i in range(n_queries)],
            "text": [f"q{i}" for i in range(n_queries)],
        }
    )
    corpus = pd.DataFrame(
        {
            "doc_id": [f"D{k}" for k in range(n_passages)],
            "title": "",
            "text": [f"p{k}" for k in range(n_passages)],
        }
    )
    hard = hard or (lambda i: [])
    records = pd.DataFrame(
        {
            "query_id": queries["query_id"],
            "positive_ids": [
                [f"D{i}"] + ([f"D{i + 20}"] if i % 2 == 0 else []) for i in range(n_queries)
            ],
            "negative_ids": [hard(i) for i in range(n_queries)],
            "negative_kind": "imported",
        }
    )
    return queries, corpus, records


def _examples(**kw):
    return TrainingExamples.from_tables(*_tables(**kw))


def _words(tokenizer, ids, mask) -> list[str]:
    """The one non-special word of each row."""
    out = []
    for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
        toks = tokenizer.convert_ids_to_tokens([t for t, keep in zip(row, m, strict=True) if keep])
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
        out.append(" ".join(toks[1:-1]))
    return out


def _number(word: str) -> int:
    return int(word[1:])


def test_gold_first_then_each_querys_negatives(tokenizer):
    ex = _examples(hard=lambda i: [f"D{(i + 5) % 12}", f"D{(i + 6) % 12}"])
    B, N = 4, 2
    ds = FinetuneBatches(ex, tokenizer, B, n_negatives=N, hard_ratio=0.5, seed=1)
    for batch in itertools.islice(iter(ds), 6):
        assert batch["q_input_ids"].shape[0] == B
        assert batch["k_input_ids"].shape[0] == B * (1 + N) == batch["k_attention_mask"].shape[0]
        queries = [
            _number(w) for w in _words(tokenizer, batch["q_input_ids"], batch["q_attention_mask"])
        ]
        keys = [
            _number(w) for w in _words(tokenizer, batch["k_input_ids"], batch["k_attention_mask"])
        ]
        assert queries == batch["examples"].tolist()
        assert keys == batch["passages"].tolist()
        for i, q in enumerate(queries):
            positives = {q, q + 20} if q % 2 == 0 else {q}
            assert keys[i] in positives  # gold i belongs to query i
            negs = keys[B + i * N : B + (i + 1) * N]
            assert not set(negs) & positives  # a gold is never its own query's negative
            assert len(set(negs)) == N


def test_padding_is_to_the_batch_maximum_with_pad_id(tokenizer):
    queries, corpus, records = _tables()
    corpus.loc[3, "title"] = "title"
    corpus.loc[5, "text"] = "a - b"
    ex = TrainingExamples.from_tables(queries, corpus, records)
    assert ex.passage_texts[3].as_py() == "title p3" and ex.passage_texts[4].as_py() == "p4"
    ds = FinetuneBatches(ex, tokenizer, N_QUERIES, n_negatives=N_PASSAGES - 2, pad_id=7)
    batch = ds.batch(0)
    mask, ids = batch["k_attention_mask"], batch["k_input_ids"]
    assert mask.shape[1] == 5  # [CLS] a - b [SEP]
    assert (ids[mask == 0] == 7).all() and (mask.sum(1) >= 3).all()


def test_normalize_text_applies_the_character_normaliser(tokenizer):
    queries, corpus, records = _tables()
    queries.loc[0, "text"] = "a\u2013b"
    ex = TrainingExamples.from_tables(queries, corpus, records)
    on = FinetuneBatches(ex, tokenizer, N_QUERIES, normalize_text=True)
    off = FinetuneBatches(ex, tokenizer, N_QUERIES)
    row = on.batch(0)["examples"].tolist().index(0)
    assert _words(
        tokenizer, *[on.batch(0)[k][row : row + 1] for k in ("q_input_ids", "q_attention_mask")]
    ) == ["a - b"]
    assert (
        "[UNK]"
        in _words(
            tokenizer,
            *[off.batch(0)[k][row : row + 1] for k in ("q_input_ids", "q_attention_mask")],
        )[0]
    )


def test_hard_ratio_is_honoured_over_many_draws():
    ex = _examples(n_passages=2000, hard=lambda i: [f"D{100 + 10 * i + j}" for j in range(10)])
    ds = FinetuneBatches(ex, None, 100, n_negatives=1, hard_ratio=0.1, pad_id=0)
    draws, hard = 0, 0
    for b in range(200):
        examples, passages, n_hard = ds.draw(b)
        negs = passages[100:]
        in_hard = [
            int(p) in set(ex.hard(int(i)).tolist()) for i, p in zip(examples, negs, strict=True)
        ]
        assert sum(in_hard) >= n_hard
        draws, hard = draws + len(examples), hard + n_hard
    assert draws == 20000
    sd = (draws * 0.1 * 0.9) ** 0.5
    assert abs(hard - 0.1 * draws) < 4 * sd


def test_hard_rank_min_and_mined_negatives():
    queries, corpus, records = _tables(hard=lambda i: ["D34", "D35", "D36", "D37"])
    ex = TrainingExamples.from_tables(queries, corpus, records, hard_rank_min=2)
    assert [ex.passage_ids[k] for k in ex.hard(1)] == ["D36", "D37"]
    ds = FinetuneBatches(ex, None, 6, n_negatives=2, hard_ratio=1.0, pad_id=0)
    for b in range(20):
        _, passages, n_hard = ds.draw(b)
        assert n_hard == 12
        assert set(passages[6:].tolist()) <= {36, 37}

    # A mined run: the query's own positive (rank 1) and repeats go before the min index.
    mined = pd.DataFrame(
        {
            "query_id": ["Q1", "Q1", "Q1", "Q1", "Q1", "Q9", "Q0"],
            "doc_id": ["D25", "D1", "D26", "D26", "D27", "D5", "D20"],
            "rank": [2, 1, 3, 4, 5, 1, 1],
            "score": 0.0,
        }
    )
    ex = TrainingExamples.from_tables(queries, corpus, records, mined_df=mined, hard_rank_min=1)
    assert [ex.passage_ids[k] for k in ex.hard(1)] == ["D26", "D27"]
    assert list(ex.hard(0)) == []  # D20 is Q0's positive
    assert [ex.passage_ids[k] for k in ex.hard(9)] == []  # only one mined, skipped by min 1
    assert len(ex.hard(2)) == 0  # mined replaces the records' negatives


def test_fewer_hard_negatives_than_requested_are_filled_with_random():
    ex = _examples(hard=lambda i: [f"D{(i + 1) % 12}"])
    N = 3
    ds = FinetuneBatches(ex, None, 5, n_negatives=N, hard_ratio=1.0, pad_id=0)
    for b in range(10):
        examples, passages, n_hard = ds.draw(b)
        assert len(passages) == 5 * (1 + N) and n_hard == 5
        for row, i in enumerate(examples):
            negs = passages[5 + row * N : 5 + (row + 1) * N].tolist()
            assert negs[0] == (i + 1) % 12 and len(set(negs)) == N
            assert not set(negs) & set(ex.positives(int(i)).tolist())


def test_two_ranks_partition_the_global_batch():
    ex = _examples()
    one = FinetuneBatches(ex, None, 6, seed=4, pad_id=0)
    ranks = [FinetuneBatches(ex, None, 3, rank=r, world_size=2, seed=4, pad_id=0) for r in (0, 1)]
    seen = []
    for b in range(6):
        parts = [r.example_indices(b) for r in ranks]
        assert np.concatenate(parts).tolist() == one.example_indices(b).tolist()
        seen.extend(np.concatenate(parts).tolist())
        # Both ranks draw different negatives even for the same example.
        assert not np.array_equal(ranks[0].draw(b)[1], ranks[1].draw(b)[1])
    for epoch in range(3):  # 12 examples, global batch 6: every epoch covers each once
        assert sorted(seen[12 * epoch : 12 * (epoch + 1)]) == list(range(12))
    assert seen[:12] != seen[12:24]  # a fresh shuffle each epoch


def test_resume_gives_the_same_batches(tokenizer):
    ex = _examples(hard=lambda i: [f"D{(i + 3) % 12}", f"D{(i + 4) % 12}"])
    kw = dict(n_negatives=2, hard_ratio=0.5, seed=9, rank=1, world_size=2)
    full = list(itertools.islice(iter(FinetuneBatches(ex, tokenizer, 5, **kw)), 8))
    resumed = list(
        itertools.islice(iter(FinetuneBatches(ex, tokenizer, 5, start_batch=5, **kw)), 3)
    )
    assert [b["index"] for b in full] == list(range(8))
    for a, b in zip(full[5:], resumed, strict=True):
        assert a["index"] == b["index"]
        for key in (
            "q_input_ids",
            "q_attention_mask",
            "k_input_ids",
            "k_attention_mask",
            "passages",
        ):
            assert a[key].equal(b[key]), key
    other = FinetuneBatches(ex, tokenizer, 5, **{**kw, "seed": 10}).batch(5)
    assert not other["passages"].equal(full[5]["passages"])


def test_bad_tables_and_settings_raise_input_errors():
    queries, corpus, records = _tables()
    with pytest.raises(InputError, match="'Q3'"):
        TrainingExamples.from_tables(queries.drop(index=3), corpus, records)
    bad = records.copy()
    bad.at[2, "positive_ids"] = ["D2", "D99"]
    with pytest.raises(InputError, match="positive 'D99' of query 'Q2' is not in the corpus"):
        TrainingExamples.from_tables(queries, corpus, bad)
    bad = records.copy()
    bad.at[4, "negative_ids"] = ["D77"]
    with pytest.raises(InputError, match="negative 'D77' of query 'Q4'"):
        TrainingExamples.from_tables(queries, corpus, bad)
    bad = records.copy()
    bad.at[5, "positive_ids"] = []
    with pytest.raises(InputError, match="'Q5' has no positive"):
        TrainingExamples.from_tables(queries, corpus, bad)

    ex = TrainingExamples.from_tables(queries, corpus, records)
    FinetuneBatches(ex, None, 4, n_negatives=N_PASSAGES - 2, pad_id=0).draw(0)
    with pytest.raises(InputError, match="too small"):
        FinetuneBatches(ex, None, 4, n_negatives=N_PASSAGES - 1, pad_id=0)
    with pytest.raises(InputError):
        FinetuneBatches(ex, None, 4, rank=2, world_size=2, pad_id=0)


def test_steps_for_epochs_rounds_up():
    assert steps_for_epochs(729, 500, 256) == 1424
    assert steps_for_epochs(512, 1, 256) == 2
    assert steps_for_epochs(10, 0.5, 4) == 2
    with pytest.raises(InputError):
        steps_for_epochs(0, 1, 4)


def test_dataloader_workers_do_not_change_the_stream(tokenizer):
    import torch

    ex = _examples(hard=lambda i: [f"D{(i + 3) % 12}"])
    ds = FinetuneBatches(ex, tokenizer, 4, n_negatives=1, hard_ratio=0.5, seed=2, start_batch=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = list(itertools.islice(iter(loader), 4))
    assert [b["index"] for b in got] == [3, 4, 5, 6]
    for b in got:
        assert b["k_input_ids"].equal(ds.batch(b["index"])["k_input_ids"])
