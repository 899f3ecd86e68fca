"""The PyTorch exact search (backend="torch") gives FAISS IndexFlatIP's results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

from contriever_repro.retrieval.search import exact_search
from contriever_repro.retrieval.torch_search import exact_fp32, torch_topk


def _faiss_topk(docs: np.ndarray, queries: np.ndarray, k: int):
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    return index.search(queries, k)


def _assert_same_topk(got, want, rtol=1e-5, atol=1e-5):
    """Same top-k up to fp32 rounding: scores agree rank by rank, every document found
    by both has the same score in both, and a document found by one only scores (in
    both runs) within rounding of the k-th score, where rounding may swap neighbours."""
    (gs, gi), (ws, wi) = got, want
    assert gs.dtype == np.float32 and gi.dtype == np.int64 and gs.shape == ws.shape
    np.testing.assert_allclose(gs, ws, rtol=rtol, atol=atol)
    for q in range(gs.shape[0]):
        g, w = dict(zip(gi[q], gs[q], strict=True)), dict(zip(wi[q], ws[q], strict=True))
        for doc in g.keys() & w.keys():
            np.testing.assert_allclose(g[doc], w[doc], rtol=rtol, atol=atol)
        kth = ws[q, -1]
        for doc, score in {**{d: g[d] for d in g.keys() - w.keys()},
                           **{d: w[d] for d in w.keys() - g.keys()}}.items():  # fmt: skip
            assert abs(score - kth) <= atol + rtol * abs(kth), (q, doc, score, kth)


def test_chunked_search_equals_faiss_on_cpu():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((5000, 64), dtype=np.float32)
    queries = rng.standard_normal((50, 64), dtype=np.float32)
    want = _faiss_topk(docs, queries, 100)
    got = torch_topk(docs, queries, 100, doc_chunk=700, query_chunk=16)
    _assert_same_topk(got, want)
    # One chunk for all: other matrix shapes round differently, nothing more.
    _assert_same_topk(torch_topk(docs, queries, 100, doc_chunk=5000, query_chunk=50), got)


def test_known_answer_and_ties_take_the_lower_index():
    docs = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    queries = np.array([[1, 0], [0.5, 2]], dtype=np.float32)
    scores, idx = torch_topk(docs, queries, 3)
    np.testing.assert_array_equal(idx, [[0, 2, 1], [2, 1, 0]])
    np.testing.assert_array_equal(scores, [[1, 1, 0], [2.5, 2, 0.5]])
    scores, idx = torch_topk(docs, queries, 1)
    np.testing.assert_array_equal(idx, [[0], [2]])
    # Ten copies of one document: the cut at k keeps the lowest rows, whether the tie
    # lies inside one chunk or across chunks.
    dupes = np.ones((10, 4), dtype=np.float32)
    for doc_chunk in (10, 4, 1):
        scores, idx = torch_topk(dupes, np.ones((2, 4), np.float32), 3, doc_chunk=doc_chunk)
        np.testing.assert_array_equal(idx, [[0, 1, 2], [0, 1, 2]])
        assert (scores == 4).all()


def test_memory_mapped_shard_and_bad_arguments(tmp_path):
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((300, 8), dtype=np.float32)
    np.save(tmp_path / "d.npy", docs)
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")
    queries = rng.standard_normal((5, 8), dtype=np.float32)
    got = torch_topk(mapped, queries, 10, doc_chunk=64, query_chunk=2)
    _assert_same_topk(got, _faiss_topk(docs, queries, 10))
    with pytest.raises(ValueError, match="k=301"):
        torch_topk(docs, queries, 301)
    with pytest.raises(ValueError, match="documents of dim 8"):
        torch_topk(docs, queries[:, :4], 3)
    empty = torch_topk(docs, queries[:0], 3)
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3)


def test_strict_fp32_inside_and_settings_restored():
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    torch.set_float32_matmul_precision("high")
    try:
        with exact_fp32():
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before


def _shards_and_queries():
    """Shards of 0, 7, 150 and 93 documents (one smaller than k, one empty); two
    queries carry a document's id and vector, so dropping identical ids matters."""
    rng = np.random.default_rng(2)
    docs = rng.standard_normal((250, 16), dtype=np.float32)
    ids = [f"d{i}" for i in range(250)]
    bounds = [(0, 0), (0, 7), (7, 157), (157, 250)]
    shards = [(ids[a:b], docs[a:b]) for a, b in bounds]
    queries = np.concatenate([docs[[3, 200]], rng.standard_normal((4, 16), dtype=np.float32)])
    qids = ["d3", "d200", "q0", "q1", "q2", "q3"]
    return qids, queries, shards


@pytest.mark.parametrize("drop", [True, False])
def test_exact_search_backends_give_one_run(drop):
    qids, queries, shards = _shards_and_queries()
    kw = {"top_k": 20, "drop_identical_ids": drop, "use_gpu": False}
    want = exact_search(qids, queries, shards, **kw)
    got = exact_search(qids, queries, shards, backend="torch", device="cpu", **kw)
    assert len(want) == 6 * 20
    assert (("d3", "d3") in set(zip(want["query_id"], want["doc_id"], strict=True))) is not drop
    cols = ["query_id", "doc_id", "rank"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="backend must be one of"):
        exact_search(qids, queries, shards, backend="numpy", **kw)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.path.join(root, "lib"), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        cwd=root,
    )


def test_search_module_imports_neither_torch_nor_faiss():
    proc = _python("""
        import sys
        import contriever_repro.retrieval.search
        print(sorted(m for m in ("torch", "faiss") if m in sys.modules))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_torch_backend_needs_no_faiss():
    proc = _python("""
        import sys
        sys.modules["faiss"] = None  # import faiss now fails as if not installed
        import numpy as np
        from contriever_repro.retrieval.search import exact_search, faiss_gpu_available
        assert not faiss_gpu_available()
        docs = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
        run = exact_search(["q"], np.array([[0.5, 2]], np.float32), [(["a", "b", "c"], docs)],
                           top_k=2, use_gpu=False, backend="torch")
        print(list(run["doc_id"]), list(run["score"]))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['c', 'b'] [2.5, 2.0]"


def _search_script(
    args: list[str], no_faiss: bool = False, no_torch: bool = False
) -> subprocess.CompletedProcess:
    """scripts/search.py in a subprocess that sees no GPU (and, with no_faiss or
    no_torch, cannot import FAISS or torch)."""
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "search.py")
    blocked = ["faiss"] * no_faiss + ["torch"] * no_torch
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in blocked)
    code = f"""
        import runpy, sys
        {block}
        sys.argv = {[script, *args]!r}
        runpy.run_path(sys.argv[0], run_name="__main__")
    """
    return _python(code, CUDA_VISIBLE_DEVICES="")


def test_search_script_torch_backend_gives_the_faiss_run(tmp_path):
    from contriever_repro.models.spec import ModelSpec
    from contriever_repro.retrieval.encode import embedding_meta, save_embeddings

    qids, queries, shards = _shards_and_queries()
    spec = ModelSpec(name="m", source="x")
    shard_args = []
    for s, (ids, emb) in enumerate(shards):
        save_embeddings(tmp_path / f"c.{s}", ids, emb, embedding_meta(spec, "passage"))
        shard_args += ["--shard", str(tmp_path / f"c.{s}")]
    save_embeddings(tmp_path / "q", qids, queries, embedding_meta(spec, "query"))

    def search(backend, *extra, **blocked):
        args = ["--queries", str(tmp_path / "q"), *shard_args, "--top-k", "20",
                "--backend", backend, "--run", str(tmp_path / f"{backend}.parquet"),
                "--trec", str(tmp_path / f"{backend}.trec"), *extra]  # fmt: skip
        return _search_script(args, **blocked)

    # A FAISS search job, thread count included, never starts torch (a second a job).
    faiss_run = search("faiss", "--threads", "1", no_torch=True)
    for proc in (faiss_run, search("torch", no_faiss=True)):
        assert proc.returncode == 0, proc.stderr
    want = pd.read_parquet(tmp_path / "faiss.parquet")
    got = pd.read_parquet(tmp_path / "torch.parquet")
    cols = ["query_id", "doc_id", "rank"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5)
    # torch's CUDA decides the device: a GPU job that sees none stops at once.
    (tmp_path / "torch.parquet").unlink()
    proc = search("torch", "--gpus", "1", no_faiss=True)
    assert proc.returncode == 2 and "refusing to search on CPU" in proc.stderr
    assert not (tmp_path / "torch.parquet").exists()
    args = ["--queries", "q", "--index", "i", "--run", "r", "--trec", "t", "--backend", "torch"]
    proc = _search_script(args)
    assert proc.returncode == 2 and "--backend torch goes with --shard" in proc.stderr
