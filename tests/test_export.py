"""The exported folder loads in transformers and sentence-transformers as the workflow
encodes: mean pooling over all tokens, no normalisation, dot product, no missing weight."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contriever_repro.data.demo_world import DemoWorld
from contriever_repro.errors import InputError
from contriever_repro.io import write_table
from contriever_repro.models import export
from contriever_repro.models.spec import ModelSpec, load_encoder
from contriever_repro.models.tiny_bert import build_tiny_bert
from contriever_repro.retrieval.encode import encode_texts
from contriever_repro.training.contrastive import Encoder, InBatch
from contriever_repro.training.loop import export_hf_folder

TEXTS = [
    "where was marie curie born?",
    "Maria Sklodowska was born in Warsaw, then part of the Russian Empire.",
    "x",
    "A much longer passage " * 30,
]
METADATA = {
    "name": "tiny-contriever",
    "step": 12,
    "steps": 12,
    "world_size": 1,
    "global_batch": 8,
    "init": "work/models/tiny-bert",
    "config": {"objective": "moco", "lr": 5e-5, "sources": ["wiki", "ccnet"], "queue_size": 64},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny BERT, trained weights perturbed so nothing is at its initialisation,
    exported the way `pretrain` exports (through InBatch/Encoder, pooler removed)."""
    root = tmp_path_factory.mktemp("export")
    text = root / "text.txt"
    DemoWorld(3).write_pretraining_text(text, 200)
    init = build_tiny_bert(text.read_text().splitlines(), root / "init", vocab_size=400)
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(init, add_pooling_layer=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    wrapped = InBatch(Encoder(model))
    return export_hf_folder(wrapped, AutoTokenizer.from_pretrained(init), root / "out", METADATA)


def test_sentence_transformers_gives_the_workflows_embeddings_and_dot(exported):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(exported), device="cpu")
    assert st.similarity_fn_name == "dot"
    assert st.max_seq_length == 512
    spec = ModelSpec(name="tiny", source=str(exported))  # Contriever's spec: mean, dot
    tok, model = load_encoder(spec)
    ours = encode_texts(
        TEXTS,
        tok,
        model,
        max_length=spec.max_passage_length,
        batch_size=2,
        pooling=spec.pooling,
        l2_normalize=spec.l2_normalize,
    )
    theirs = st.encode(TEXTS, batch_size=3, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    assert not np.allclose(np.linalg.norm(theirs, axis=1), 1.0), "not normalised"
    scores = st.similarity(theirs[:1], theirs[1:]).numpy()
    np.testing.assert_allclose(scores, ours[:1] @ ours[1:].T, rtol=1e-5, atol=1e-5)


def test_automodel_loads_every_weight_from_the_file(exported):
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert model.pooler is not None and not model.pooler.dense.weight.any()
    with torch.no_grad():
        batch = {"input_ids": torch.tensor([[2, 7, 9, 3]])}
        assert not model(**batch).pooler_output.any(), "pooler_output is zero, not random"


def test_folder_layout_is_the_long_standing_sentence_transformers_one(exported):
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["type"] for m in modules] == [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
    ]
    pooling = json.loads((exported / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert pooling["word_embedding_dimension"] == 64
    st_cfg = json.loads((exported / "config_sentence_transformers.json").read_text())
    assert st_cfg["similarity_fn_name"] == "dot"
    assert json.loads((exported / "sentence_bert_config.json").read_text())["max_seq_length"] == 512
    assert json.loads((exported / "pretraining.json").read_text())["step"] == 12


def test_model_card_records_training_and_gets_metrics_later(exported, tmp_path):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers\n")
    assert "# tiny-contriever" in card
    assert "- steps: 12 of 12" in card and "`work/models/tiny-bert`" in card
    assert "- data: `wiki`, `ccnet`" in card
    assert "| queue_size | `64` |" in card and "| lr | `5e-05` |" in card
    assert "Not evaluated yet" in card

    rows = []
    for ds, ndcg, recall in (("scifact", 0.6491, 0.926), ("nfcorpus", 0.3281, 0.2943)):
        for metric, value in (("ndcg@10", ndcg), ("recall@100", recall), ("mrr@10", 0.5)):
            rows.append(("contriever-trained", ds, "test", metric, value))
    cols = ["model", "dataset", "split", "metric", "value"]
    paths = []
    for ds in ("scifact", "nfcorpus"):
        df = pd.DataFrame([r for r in rows if r[1] == ds], columns=cols)
        paths.append(tmp_path / f"{ds}.parquet")
        write_table(df, paths[-1])
    export.write_model_card(exported, paths)
    card = (exported / "README.md").read_text()
    assert "Not evaluated yet" not in card
    table = [ln for ln in card.splitlines() if ln.startswith("|") and "contriever-trained" in ln]
    assert table == [
        "| contriever-trained | nfcorpus | test | 32.8 | 29.4 |",
        "| contriever-trained | scifact | test | 64.9 | 92.6 |",
    ]
    assert re.search(r"\| model \| dataset \| split \| ndcg@10 \| recall@100 \|", card)
    # re-running replaces the table instead of appending a second one
    export.write_model_card(exported, paths[:1])
    card = (exported / "README.md").read_text()
    assert card.count("| model | dataset |") == 1 and "nfcorpus" not in card


def test_card_of_a_folder_not_exported_here_is_refused(tmp_path):
    with pytest.raises(InputError, match="pretraining.json"):
        export.write_model_card(tmp_path)


def test_model_card_script_writes_the_card_elsewhere(exported, tmp_path):
    root = Path(__file__).resolve().parents[1]
    df = pd.DataFrame(
        [("m", "scifact", "test", "ndcg@10", 0.5)],
        columns=["model", "dataset", "split", "metric", "value"],
    )
    write_table(df, tmp_path / "scifact.parquet")
    out = tmp_path / "cards" / "tiny.md"
    before = (exported / "README.md").read_text()
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "model_card.py"), "--model-dir", str(exported)]
        + ["--metrics", str(tmp_path / "scifact.parquet"), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root / "lib")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "| m | scifact | test | 50.0 |" in out.read_text()
    assert (exported / "README.md").read_text() == before, "the model folder is untouched"
