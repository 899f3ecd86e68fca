"""Cross-encoder re-ranking (retrieval/rerank.py): the order, the scores that carry it to
trec_eval, sharding, and bad input; then real SciFact with MiniLM weights."""

from __future__ import annotations

import random
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from contriever_repro.errors import InputError
from contriever_repro.evaluation.metrics import aggregate, evaluate_run
from contriever_repro.io import read_table, write_table
from contriever_repro.models.tiny_bert import build_tokenizer, count_words, learn_wordpiece_vocab
from contriever_repro.retrieval import rerank as rr

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "protein", "cell", "gene", "virus", "cancer", "immune", "brain", "heart", "drug", "trial",
    "mouse", "human", "blood", "liver", "tumor", "signal", "receptor", "dose", "risk", "age",
]  # fmt: skip
MAX_POS = 128


def _doc_text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def world():
    """A corpus of 140 short docs (seeded), 5 queries, and a first-stage run: each query's
    hits are 120 docs in a seeded order with decreasing scores."""
    rng = random.Random(0)
    corpus = pd.DataFrame(
        {
            "doc_id": [f"d{i:03d}" for i in range(140)],
            "title": [_doc_text(rng, 2) if i % 3 else "" for i in range(140)],
            "text": [_doc_text(rng, rng.randint(3, 25)) for i in range(140)],
        }
    )
    queries = pd.DataFrame(
        {"query_id": [f"q{i}" for i in range(5)], "text": [_doc_text(rng, 4) for _ in range(5)]}
    )
    rows = []
    for q in queries["query_id"]:
        docs = rng.sample(list(corpus["doc_id"]), 120)
        rows += [(q, d, r + 1, 50.0 - r * 0.25) for r, d in enumerate(docs)]
    run = pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])
    run = run.astype({"rank": "int32", "score": "float32"})
    return corpus, queries, run


def _save_tiny(folder: Path, texts, num_labels: int = 1, seed: int = 0, head=None) -> Path:
    vocab = learn_wordpiece_vocab(
        count_words(texts), 300, initial_alphabet=string.ascii_lowercase + string.punctuation
    )
    tok = build_tokenizer(vocab, True, MAX_POS)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POS,
        num_labels=num_labels,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)  # logits of order 1, not 0.01
        if head is not None:
            model.classifier.weight.fill_(head[0])
            model.classifier.bias.fill_(head[1])
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def texts(world):
    corpus, queries, _ = world
    return [*corpus["title"], *corpus["text"], *queries["text"]]


@pytest.fixture(scope="module")
def ce_folder(tmp_path_factory, texts) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("ce") / "tiny", texts)


@pytest.fixture(scope="module")
def ce(ce_folder):
    return rr.load_cross_encoder(ce_folder)


def _pairs(world, run: pd.DataFrame):
    corpus, queries, _ = world
    qtext = dict(zip(queries["query_id"], queries["text"], strict=True))
    docs = corpus.set_index("doc_id")
    ptext = [rr.passage_text(docs.at[d, "title"], docs.at[d, "text"]) for d in run["doc_id"]]
    return [qtext[q] for q in run["query_id"]], ptext


def _trec_order(run: pd.DataFrame) -> pd.DataFrame:
    """Each query's hits in trec_eval's order: score descending, doc id descending."""
    return run.sort_values(["query_id", "score", "doc_id"], ascending=[True, False, False])


def _assert_score_order_is_rank_order(run: pd.DataFrame) -> None:
    ranked = run.sort_values(["query_id", "rank"])
    assert _trec_order(run)["doc_id"].tolist() == ranked["doc_id"].tolist()
    for _, g in ranked.groupby("query_id"):
        assert (np.diff(g["score"].to_numpy()) < 0).all(), "scores strictly decrease"
        assert g["rank"].tolist() == list(range(1, len(g) + 1))


# --------------------------------------------------------------------- (a) the order


def test_top_depth_ordered_by_ce_score_rest_kept_below(world, ce):
    corpus, queries, run = world
    depth = 20
    out = rr.rerank_run(run, queries, corpus, ce, depth=depth, batch_size=16, max_length=64)
    assert list(out.columns) == ["query_id", "doc_id", "rank", "score"]
    assert out["rank"].dtype == np.int32 and out["score"].dtype == np.float32
    assert all(isinstance(x, str) for x in [*out["query_id"], *out["doc_id"]])
    assert len(out) == len(run)
    for q, first in run.groupby("query_id"):
        first = first.sort_values("rank")
        mine = out[out["query_id"] == q].sort_values("rank")
        top = first.head(depth)
        direct = rr.score_pairs(ce, *_pairs(world, top), batch_size=1, max_length=64)
        expected = top.assign(ce=direct).sort_values("ce", ascending=False, kind="stable")
        assert mine["doc_id"].head(depth).tolist() == expected["doc_id"].tolist()
        np.testing.assert_allclose(mine["score"].head(depth), expected["ce"], atol=1e-5)
        # Beyond depth: first-stage order, below every re-ranked hit, min - 1 - i.
        assert mine["doc_id"].iloc[depth:].tolist() == first["doc_id"].iloc[depth:].tolist()
        lowest = np.float64(mine["score"].iloc[depth - 1])
        rest = (lowest - 1 - np.arange(len(first) - depth)).astype(np.float32)
        np.testing.assert_array_equal(mine["score"].iloc[depth:].to_numpy(), rest)
    _assert_score_order_is_rank_order(out)


# --------------------------------------------------------------------- (b) metrics


def test_recall_at_depth_unchanged_ndcg_changes(world, ce):
    corpus, queries, run = world
    rng = random.Random(1)
    qrels = []
    for q, g in run.groupby("query_id"):
        docs = g.sort_values("rank")["doc_id"].tolist()
        for r in (3, rng.randint(20, 60), 99, 110):  # two beyond 10, one beyond depth
            qrels.append((q, docs[r - 1], rng.choice([1, 2])))
    qrels = pd.DataFrame(qrels, columns=["query_id", "doc_id", "relevance"])
    out = rr.rerank_run(run, queries, corpus, ce, depth=100, max_length=64)
    ks = [10, 100, 1000]
    before = evaluate_run(run, qrels, ks).set_index(["query_id", "metric"])["value"]
    after = evaluate_run(out, qrels, ks).set_index(["query_id", "metric"])["value"]
    for m in ("recall@100", "recall@1000", "p@100"):
        pd.testing.assert_series_equal(before.xs(m, level=1), after.xs(m, level=1))
    mean = lambda per: aggregate(per).set_index("metric")["value"]  # noqa: E731
    b, a = mean(evaluate_run(run, qrels, ks)), mean(evaluate_run(out, qrels, ks))
    assert b["recall@100"] == a["recall@100"] == pytest.approx(0.75)
    assert b["ndcg@10"] != a["ndcg@10"]
    # Ranks beyond the depth are the first stage's.
    tail = lambda r: r[r["rank"] > 100].sort_values(["query_id", "rank"])  # noqa: E731
    assert tail(out)[["query_id", "doc_id", "rank"]].values.tolist() == (
        tail(run)[["query_id", "doc_id", "rank"]].values.tolist()
    )


# --------------------------------------------------------------------- (c) ties


def test_ties_keep_first_stage_order_and_trec_eval_agrees(world, monkeypatch):
    corpus, queries, run = world
    run = run[run["rank"] <= 12]
    # Hand-made scores: per query, docs at first-stage ranks 2, 5, 7 tie at 1.0, ranks
    # 3 and 9 tie at 2.0, all others 0.5 (one big tie).
    tied = {2: 1.0, 5: 1.0, 7: 1.0, 3: 2.0, 9: 2.0}
    pos = {(q, d): r for q, d, r in zip(run["query_id"], run["doc_id"], run["rank"], strict=True)}
    by_pair: dict[tuple[str, str], float] = {}
    qtext = dict(zip(queries["query_id"], queries["text"], strict=True))
    docs = corpus.set_index("doc_id")
    for (q, d), r in pos.items():
        by_pair[qtext[q], rr.passage_text(docs.at[d, "title"], docs.at[d, "text"])] = tied.get(
            r, 0.5
        )

    def fake_scores(ce, qs, ps, **kw):
        return np.asarray([by_pair[q, p] for q, p in zip(qs, ps, strict=True)], np.float32)

    monkeypatch.setattr(rr, "score_pairs", fake_scores)
    out = rr.rerank_run(run, queries, corpus, ce=None, depth=10)
    for q, g in out.groupby("query_id"):
        first_ranks = [pos[q, d] for d in g.sort_values("rank")["doc_id"]]
        assert first_ranks == [3, 9, 2, 5, 7, 1, 4, 6, 8, 10, 11, 12]
        s = g.sort_values("rank")["score"].to_numpy()
        assert s[0] == np.float32(2.0) and s[1] == np.nextafter(np.float32(2.0), np.float32(0))
        assert s[2] == np.float32(1.0) and s[5] == np.float32(0.5)
        # Ties are moved by one float32 ulp each, no more.
        assert s[4] == np.nextafter(np.nextafter(np.float32(1.0), -1), np.float32(-1))
    _assert_score_order_is_rank_order(out)
    # Evaluation orders by score: the same metrics as ordering by the ranks themselves.
    qrels = pd.DataFrame(
        [(q, d, 1) for (q, d), r in pos.items() if r in (4, 9, 11)],
        columns=["query_id", "doc_id", "relevance"],
    )
    by_rank = out.assign(score=-out["rank"].astype("float32"))
    ks = [1, 3, 5, 10]
    pd.testing.assert_frame_equal(evaluate_run(out, qrels, ks), evaluate_run(by_rank, qrels, ks))


def test_a_constant_model_changes_nothing(world, texts, tmp_path):
    """A real model whose head ignores its input: every score ties, so the re-ranked
    run is the first stage, with strictly decreasing scores."""
    corpus, queries, run = world
    folder = _save_tiny(tmp_path / "flat", texts, head=(0.0, 0.25))
    ce = rr.load_cross_encoder(folder)
    out = rr.rerank_run(run, queries, corpus, ce, depth=30, max_length=64)
    pd.testing.assert_frame_equal(
        out[["query_id", "doc_id", "rank"]],
        run.sort_values(["query_id", "rank"])[["query_id", "doc_id", "rank"]].reset_index(
            drop=True
        ),
    )
    assert (out.groupby("query_id")["score"].first() == np.float32(0.25)).all()
    _assert_score_order_is_rank_order(out)


# --------------------------------------------------------------------- (d) shards


def test_shards_merge_to_the_unsharded_run(world, ce, tmp_path):
    corpus, queries, run = world
    run = run[run["rank"] <= 25]
    whole = rr.rerank_run(run, queries, corpus, ce, depth=15, max_length=64)
    ids = run["query_id"].unique()
    blocks = [rr.query_shard(reversed(ids), s, 3) for s in range(3)]
    assert blocks == [["q0", "q1"], ["q2", "q3"], ["q4"]]  # sorted, contiguous
    assert rr.query_shard(ids, 3, 7) == ["q3"] and rr.query_shard(ids, 6, 7) == []
    paths = []
    for s, block in enumerate(blocks):
        part = rr.rerank_run(run[run["query_id"].isin(block)], queries, corpus, ce, depth=15,
                             batch_size=7, max_length=64)  # fmt: skip
        paths.append(tmp_path / f"shard{s}.parquet")
        write_table(part, paths[-1], "run")
    merged = rr.merge_runs(list(reversed(paths)), query_ids=ids)
    assert merged[["query_id", "doc_id", "rank"]].equals(whole[["query_id", "doc_id", "rank"]])
    np.testing.assert_allclose(merged["score"], whole["score"], atol=1e-5)
    # An empty shard (more shards than queries) is a valid, empty run.
    empty = rr.rerank_run(run[run["query_id"].isin([])], queries, corpus, ce, depth=15)
    assert empty.empty and list(empty.columns) == ["query_id", "doc_id", "rank", "score"]
    assert rr.merge_runs([*paths, empty], query_ids=ids).equals(merged)

    with pytest.raises(InputError, match=r"query 'q4' is in two shard runs: .*shard2.*shard2"):
        rr.merge_runs([paths[2], paths[2]])
    with pytest.raises(InputError, match=r"2 first-stage queries are in no shard run: 'q2'"):
        rr.merge_runs([paths[0], paths[2]], query_ids=ids)
    with pytest.raises(InputError, match=r"not in the first-stage run: 'q4'"):
        rr.merge_runs(paths, query_ids=["q0", "q1", "q2", "q3"])
    with pytest.raises(InputError, match="shard 3 out of range for 3 shards"):
        rr.query_shard(ids, 3, 3)


# --------------------------------------------------------------------- (e) batching


def test_scores_do_not_depend_on_batching_or_order(world, ce, ce_folder):
    _, _, run = world
    qs, ps = _pairs(world, run[run["rank"] <= 8])
    ref = rr.score_pairs(ce, qs, ps, batch_size=64, max_length=64)
    for bs in (1, 3, 17):
        np.testing.assert_allclose(rr.score_pairs(ce, qs, ps, bs, 64), ref, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(qs))
    shuffled = rr.score_pairs(ce, [qs[i] for i in perm], [ps[i] for i in perm], 5, 64)
    np.testing.assert_allclose(shuffled, ref[perm], atol=1e-5)
    # Each pair alone, straight through the tokenizer and the model.
    tok = AutoTokenizer.from_pretrained(ce_folder)
    model = BertForSequenceClassification.from_pretrained(ce_folder).eval()
    with torch.no_grad():
        for i in range(0, len(qs), 7):
            enc = tok(qs[i], ps[i], truncation="only_second", max_length=64, return_tensors="pt")
            assert model(**enc).logits[0, 0].item() == pytest.approx(float(ref[i]), abs=1e-5)
    # beir's reranker calls sentence-transformers' CrossEncoder (sigmoid removed here).
    st = pytest.importorskip("sentence_transformers")
    theirs = st.CrossEncoder(str(ce_folder), max_length=64, device="cpu",
                             activation_fn=torch.nn.Identity())  # fmt: skip
    pred = theirs.predict(list(zip(qs, ps, strict=True)), batch_size=16)
    np.testing.assert_allclose(np.asarray(pred, dtype=np.float32), ref, atol=1e-5)


def test_long_texts_tokenise_as_if_whole(ce):
    tok = ce.tokenizer
    rng = random.Random(3)
    query = _doc_text(rng, 5)
    passages = [
        _doc_text(rng, 600),  # cut at a space after 16 characters per token
        "x" * 3000 + " " + _doc_text(rng, 50),  # one huge word: must be re-cut longer
        "cell gene",
    ]
    cut, lengths = rr._cut_texts(tok, passages, 32)
    assert len(cut[0]) < len(passages[0]) and lengths[:2] == [32, 32] and lengths[2] == 2
    enc = rr._tokenize_pairs(tok, [query] * 3, cut, 32)
    whole = tok([query] * 3, passages, truncation="only_second", max_length=32, padding=True,
                return_tensors="pt")  # fmt: skip
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(enc[key], whole[key]), key
    # A query that leaves no room for the passage: longest_first, as if whole.
    long_q = _doc_text(rng, 200)
    ref = tok(long_q, passages[0], truncation="longest_first", max_length=32)["input_ids"]
    qcut, qlen = rr._cut_texts(tok, [long_q], 32)
    assert qlen == [32]
    mixed = rr._tokenize_pairs(tok, [long_q, query], [passages[0], cut[0]], 32)
    assert mixed["input_ids"][0].tolist() == ref
    assert mixed["input_ids"][1].tolist() == enc["input_ids"][0].tolist()
    # ... and score_pairs picks the strategy per pair, from the query's length.
    scores = rr.score_pairs(ce, [long_q, query], [passages[0]] * 2, max_length=32)
    with torch.no_grad():
        for i, (q, s) in enumerate(((long_q, "longest_first"), (query, "only_second"))):
            one = tok(q, passages[0], truncation=s, max_length=32, return_tensors="pt")
            assert ce.model(**one).logits[0, 0].item() == pytest.approx(scores[i], abs=1e-5)


# --------------------------------------------------------------------- (f) bad input


def test_bad_runs(world, ce):
    corpus, queries, run = world
    short = run[~((run["query_id"] == "q3") & (run["rank"] > 40))]
    with pytest.raises(InputError, match=r"query 'q3' has 40 hits .* fewer than the re-ranking "
                       r"depth 100 \(1 such queries"):  # fmt: skip
        rr.rerank_run(short, queries, corpus, ce, depth=100)
    # A corpus smaller than the depth: the whole corpus is enough, less the query's own id.
    small = corpus.head(30)
    tiny_run = pd.DataFrame(
        [(q, d, r + 1, -r) for q in queries["query_id"] for r, d in enumerate(small["doc_id"])],
        columns=["query_id", "doc_id", "rank", "score"],
    )
    out = rr.rerank_run(tiny_run, queries, small, ce, depth=100, max_length=64)
    assert len(out) == len(tiny_run)
    # The query's own id is a document: one hit fewer is the whole corpus (q0), others not.
    own = pd.concat([small, pd.DataFrame({"doc_id": ["q0"], "title": [""], "text": ["x"]})])
    with pytest.raises(InputError, match=r"query 'q1' has 30 hits .*4 such queries: 'q1'"):
        rr.rerank_run(tiny_run, queries, own, ce, depth=100, max_length=64)
    only_q0 = tiny_run[tiny_run["query_id"] == "q0"]
    assert len(rr.rerank_run(only_q0, queries, own, ce, depth=100, max_length=64)) == 30

    with pytest.raises(InputError, match=r"1 run documents are not in the corpus: 'd007'"):
        rr.rerank_run(run, queries, corpus[corpus["doc_id"] != "d007"], ce, depth=120)
    with pytest.raises(InputError, match=r"run queries are not in the queries table: 'q2'"):
        rr.rerank_run(run, queries[queries["query_id"] != "q2"], corpus, ce, depth=10)
    dup = pd.concat([run, run.head(1)])
    with pytest.raises(InputError, match="lists doc .* twice for query 'q0'"):
        rr.rerank_run(dup, queries, corpus, ce, depth=10)
    with pytest.raises(InputError, match="depth must be a positive integer"):
        rr.rerank_run(run, queries, corpus, ce, depth=0)
    with pytest.raises(InputError, match=f"max_length 600 exceeds the model's {MAX_POS}"):
        rr.score_pairs(ce, ["a"], ["b"], max_length=600)


def test_bad_models(texts, tmp_path):
    two = _save_tiny(tmp_path / "two", texts, num_labels=2)
    with pytest.raises(InputError) as err:
        rr.load_cross_encoder(two)
    msg = str(err.value)
    assert str(two) in msg and "num_labels=2" in msg and "label_index" in msg
    assert "LABEL_1" in msg
    with pytest.raises(InputError, match=r"label_index 2 is out of range.*num_labels=2"):
        rr.load_cross_encoder(two, label_index=2)
    with pytest.raises(InputError, match="label_index -1 is out of range"):
        rr.load_cross_encoder(two, label_index=-1)
    ce1 = rr.load_cross_encoder(two, label_index=1)
    full = ce1.model(**ce1.tokenizer(["a b"], ["cell gene"], return_tensors="pt")).logits
    got = rr.score_pairs(ce1, ["a b"], ["cell gene"], max_length=64)
    assert got[0] == pytest.approx(full[0, 1].item(), abs=1e-5)

    one = _save_tiny(tmp_path / "one", texts)
    with pytest.raises(InputError, match="label_index 1 is out of range.*num_labels=1"):
        rr.load_cross_encoder(one, label_index=1)
    with pytest.raises(InputError, match="fp16 needs a GPU; use bf16 or fp32 on CPU"):
        rr.load_cross_encoder(one, dtype="fp16", device="cpu")
    bf16 = rr.load_cross_encoder(one, dtype="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert rr.score_pairs(bf16, ["cell"], ["gene"], max_length=64).dtype == np.float32
    with pytest.raises(InputError, match="not a local folder"):
        rr.load_cross_encoder(tmp_path / "nope")
    # A bi-encoder folder (plain BertModel) is not scored with a random head.
    plain = tmp_path / "plain"
    small = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    BertModel(BertConfig(vocab_size=50, **small)).save_pretrained(plain)
    with pytest.raises(InputError, match=r"not a cross-encoder: .*BertModel"):
        rr.load_cross_encoder(plain)


# --------------------------------------------------------------------- the script


def test_script_score_and_merge(world, ce_folder, tmp_path):
    corpus, queries, run = world
    for name, table, kind in (("run", run, "run"), ("queries", queries, "queries"),
                              ("corpus", corpus, "corpus")):  # fmt: skip
        write_table(table, tmp_path / f"{name}.parquet", kind)
    script = [sys.executable, str(ROOT / "scripts" / "rerank.py")]
    env = {"PYTHONPATH": str(ROOT / "lib"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    common = ["--run", tmp_path / "run.parquet", "--queries", tmp_path / "queries.parquet",
              "--corpus", tmp_path / "corpus.parquet", "--cross-encoder", ce_folder,
              "--depth", "20", "--max-length", "64", "--device", "cpu",
              "--threads", "1"]  # fmt: skip
    shards = []
    for s in range(2):
        out = tmp_path / f"s{s}.parquet"
        cmd = [*script, "score", *common, "--shard", str(s), "--num-shards", "2", "--out", out]
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "pairs/s" in proc.stderr
        shards.append(out)
    merged = tmp_path / "merged.parquet"
    cmd = [*script, "merge", "--run-shards", *shards, "--first-stage", tmp_path / "run.parquet",
           "--out", merged, "--trec", tmp_path / "merged.trec"]  # fmt: skip
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = read_table(merged, "run")
    ce = rr.load_cross_encoder(ce_folder)
    want = rr.rerank_run(run, queries, corpus, ce, depth=20, max_length=64)
    assert got[["query_id", "doc_id", "rank"]].equals(want[["query_id", "doc_id", "rank"]])
    trec = (tmp_path / "merged.trec").read_text().splitlines()
    assert len(trec) == len(got) and trec[0].split()[5] == "rerank"
    # Bad input: one line, exit status 2, nothing written.
    cmd = [*script, "score", *common[:-4], "--depth", "500", "--out", tmp_path / "bad.parquet"]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "fewer than the re-ranking depth 500" in proc.stderr
    assert not (tmp_path / "bad.parquet").exists()
    cmd = [*script, "score", *common, "--gpus", "1", "--out", tmp_path / "bad.parquet"]
    cmd[cmd.index("--device") + 1] = "auto"
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if not torch.cuda.is_available():
        assert proc.returncode == 2 and "refusing to re-rank on CPU" in proc.stderr


# --------------------------------------------------------------------- real data

N_QUERIES = 16  # SciFact test queries (seeded sample)
CORPUS_SIZE = 300  # their judged documents plus a seeded sample of the others
FIRST_STAGE_K = 150  # hits per query: 50 beyond the depth
DEPTH = 100
CE_MAX_LENGTH = 64  # with 16 x 100 pairs, keeps the test near 30 s on 2 idle cores


@pytest.mark.integration
def test_real_scifact_minilm(shared_data, minilm_path, tmp_path):
    """all-MiniLM-L6-v2 as bi-encoder (first stage), and its weights plus a seeded,
    untrained head as cross-encoder: the mechanics on real text. The head is random, so
    the re-ranked nDCG@10 should fall towards that of a random order of the top 100."""
    from contriever_repro.data.beir import read_corpus, read_qrels, read_queries
    from contriever_repro.models.spec import ModelSpec, load_encoder
    from contriever_repro.retrieval.encode import encode_table
    from contriever_repro.retrieval.search import exact_search

    started = time.perf_counter()
    source = shared_data / "beir" / "scifact"
    qrels = read_qrels(source / "qrels" / "test.tsv")
    chosen = sorted(random.Random(0).sample(sorted(qrels["query_id"].unique()), N_QUERIES))
    qrels = qrels[qrels["query_id"].isin(chosen)].reset_index(drop=True)
    queries = read_queries(source / "queries.jsonl")
    queries = queries[queries["query_id"].isin(chosen)].reset_index(drop=True)
    corpus = read_corpus(source / "corpus.jsonl")
    judged = set(qrels["doc_id"])
    others = sorted(set(corpus["doc_id"]) - judged)
    keep = judged | set(random.Random(0).sample(others, CORPUS_SIZE - len(judged)))
    corpus = corpus[corpus["doc_id"].isin(keep)].reset_index(drop=True)

    spec = ModelSpec(name="minilm", source=str(minilm_path), normalize=True,
                     max_query_length=64, max_passage_length=64, batch_size=32)  # fmt: skip
    tokenizer, encoder = load_encoder(spec, offline=True)
    doc_ids, doc_emb = encode_table(corpus, spec, tokenizer, encoder, "passage")
    qids, q_emb = encode_table(queries, spec, tokenizer, encoder, "query")
    first = exact_search(qids, q_emb, [(doc_ids, doc_emb)], top_k=FIRST_STAGE_K, use_gpu=False)

    folder = tmp_path / "minilm-ce"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    ce = rr.load_cross_encoder(folder)
    out = rr.rerank_run(first, queries, corpus, ce, depth=DEPTH, batch_size=32,
                        max_length=CE_MAX_LENGTH)  # fmt: skip

    ks = [10, 100]
    before = evaluate_run(first, qrels, ks)
    after = evaluate_run(out, qrels, ks)
    per = lambda t, m: t[t["metric"] == m].set_index("query_id")["value"]  # noqa: E731
    pd.testing.assert_series_equal(per(before, "recall@100"), per(after, "recall@100"))
    _assert_score_order_is_rank_order(out)
    # Ranks follow the cross-encoder's scores: one query re-scored directly.
    q = chosen[0]
    mine = out[(out["query_id"] == q) & (out["rank"] <= DEPTH)]
    qtext = queries.set_index("query_id").at[q, "text"]
    docs = corpus.set_index("doc_id")
    ptexts = [rr.passage_text(docs.at[d, "title"], docs.at[d, "text"]) for d in mine["doc_id"]]
    direct = rr.score_pairs(ce, [qtext] * len(ptexts), ptexts, 8, CE_MAX_LENGTH)
    np.testing.assert_allclose(mine["score"], direct, atol=1e-4)
    assert (np.diff(direct) <= 1e-5).all()

    # A random order of each query's top 100, averaged over seeds: what a head that knows
    # nothing should come near.
    rng = np.random.default_rng(0)
    shuffled = []
    for _ in range(10):
        top = first[first["rank"] <= DEPTH].copy()
        top["score"] = rng.permutation(len(top)).astype("float32")
        shuffled.append(aggregate(evaluate_run(top, qrels, [10])).set_index("metric")["value"])
    b = aggregate(before).set_index("metric")["value"]
    a = aggregate(after).set_index("metric")["value"]
    random_ndcg = float(np.mean([s["ndcg@10"] for s in shuffled]))
    print(
        f"\nSciFact subset ({N_QUERIES} test queries, {CORPUS_SIZE} docs): nDCG@10 "
        f"{b['ndcg@10']:.4f} first stage -> {a['ndcg@10']:.4f} re-ranked by MiniLM + random "
        f"head (random order of the top {DEPTH}: {random_ndcg:.4f}); Recall@100 "
        f"{b['recall@100']:.4f} -> {a['recall@100']:.4f}; {time.perf_counter() - started:.1f} s"
    )
    assert a["recall@100"] == b["recall@100"]
    assert a["ndcg@10"] < b["ndcg@10"]
