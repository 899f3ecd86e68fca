import os

import numpy as np
import pytest

from contriever_repro.errors import InputError
from contriever_repro.retrieval.encode import shard_bounds
from contriever_repro.retrieval.search import drop_identical, exact_search, rank_run, to_trec


def _emb(rows):
    return np.asarray(rows, dtype=np.float32)


def test_exact_search_ranks_by_inner_product_across_shards():
    q = _emb([[1, 0], [0, 1]])
    shard_a = (["d1", "d2"], _emb([[0.9, 0.1], [0.1, 0.2]]))
    shard_b = (["d3"], _emb([[0.5, 0.95]]))
    run = exact_search(["q1", "q2"], q, [shard_a, shard_b], top_k=2, use_gpu=False)
    got = {qid: list(g.sort_values("rank")["doc_id"]) for qid, g in run.groupby("query_id")}
    assert got == {"q1": ["d1", "d3"], "q2": ["d3", "d2"]}
    assert run.groupby("query_id")["rank"].apply(list).tolist() == [[1, 2], [1, 2]]


def test_identical_ids_are_dropped_and_k_hits_remain():
    q = _emb([[1, 0]])
    shard = (["q1", "d2", "d3"], _emb([[1, 0], [0.5, 0], [0.2, 0]]))
    run = exact_search(["q1"], q, [shard], top_k=2, drop_identical_ids=True, use_gpu=False)
    assert list(run["doc_id"]) == ["d2", "d3"]
    kept = exact_search(["q1"], q, [shard], top_k=2, drop_identical_ids=False, use_gpu=False)
    assert list(kept["doc_id"]) == ["q1", "d2"]


def test_drop_identical_reranks():
    import pandas as pd

    run = pd.DataFrame(
        {"query_id": ["a", "a", "a"], "doc_id": ["a", "x", "y"], "score": [3.0, 2.0, 1.0]}
    )
    out = drop_identical(rank_run(run))
    assert list(out["doc_id"]) == ["x", "y"] and list(out["rank"]) == [1, 2]


def test_ties_break_by_doc_id():
    q = _emb([[1, 0]])
    shard = (["b", "a", "c"], _emb([[1, 0], [1, 0], [0, 0]]))
    run = exact_search(["q"], q, [shard], top_k=3, use_gpu=False)
    assert list(run["doc_id"]) == ["a", "b", "c"]


def test_dimension_mismatch_is_reported():
    with pytest.raises(InputError, match="dimension mismatch"):
        exact_search(["q"], _emb([[1, 0]]), [(["d"], _emb([[1, 0, 0]]))], use_gpu=False)


def test_trec_export():
    import pandas as pd

    run = rank_run(pd.DataFrame({"query_id": ["1"], "doc_id": ["7"], "score": [0.5]}))
    assert to_trec(run, "tag") == "1 Q0 7 1 0.500000 tag\n"


@pytest.mark.parametrize("n,k", [(10, 3), (3, 3), (2, 3), (0, 1), (1000, 7)])
def test_shard_bounds_cover_everything_once(n, k):
    spans = [shard_bounds(n, k, i) for i in range(k)]
    covered = [i for s, e in spans for i in range(s, e)]
    assert covered == list(range(n))
    sizes = [e - s for s, e in spans]
    assert max(sizes) - min(sizes) <= 1


def test_search_job_given_a_gpu_fails_at_once_when_faiss_cannot_use_one(tmp_path):
    """faiss-cpu (or no CUDA) on a job given gpu=1: stop before reading anything rather
    than search on CPU until the time limit; `device: cpu` searches on CPU on purpose."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "scripts" / "search.py"), "--queries", str(tmp_path / "q"),
           "--shard", str(tmp_path / "c"), "--run", str(tmp_path / "run.parquet"),
           "--trec", str(tmp_path / "run.trec")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root / "lib"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*cmd, "--gpus", "1"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "given 1 GPU(s)" in proc.stderr and "refusing to search on CPU" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    proc = subprocess.run(
        [*cmd, "--gpus", "1", "--device", "cpu"], env=env, capture_output=True, text=True
    )
    assert "refusing" not in proc.stderr and "file is missing" in proc.stderr  # went on


def test_shards_from_disk_give_the_top_k_of_one_index(tmp_path):
    from contriever_repro.models.spec import ModelSpec
    from contriever_repro.retrieval.encode import embedding_meta, save_embeddings
    from contriever_repro.retrieval.search import load_shards

    rng = np.random.default_rng(0)
    docs = rng.normal(size=(50, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(50)]
    queries = rng.normal(size=(6, 8)).astype(np.float32)
    qids = [f"q{i}" for i in range(6)]
    spec = ModelSpec(name="m", source="x")
    prefixes = []
    for s, (a, b) in enumerate([(0, 17), (17, 18), (18, 50)]):
        save_embeddings(tmp_path / f"c.{s}", ids[a:b], docs[a:b], embedding_meta(spec, "passage"))
        prefixes.append(str(tmp_path / f"c.{s}"))
    qmeta = embedding_meta(spec, "query")
    merged = exact_search(qids, queries, load_shards(prefixes, qmeta), top_k=10, use_gpu=False)
    whole = exact_search(qids, queries, [(ids, docs)], top_k=10, use_gpu=False)
    import pandas as pd

    pd.testing.assert_frame_equal(merged, whole)
    other = embedding_meta(ModelSpec(name="m", source="x", pooling="cls"), "query")
    with pytest.raises(InputError, match="corpus shard has pooling='mean' but queries have 'cls'"):
        list(load_shards(prefixes, other))
