import pytest
import torch

from contriever_repro.errors import InputError
from contriever_repro.models import ModelSpec, load_encoder, pool


def test_mean_pooling_averages_only_unmasked_tokens_including_special_tokens():
    # Two sequences: [CLS] a b [SEP] and [CLS] c [SEP] [PAD]
    hidden = torch.tensor(
        [
            [[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0]],
            [[2.0, 2.0], [4.0, 4.0], [6.0, 6.0], [100.0, 100.0]],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    out = pool(hidden, mask, "mean")
    assert torch.allclose(out[0], torch.tensor([4.0, 3.0]))
    assert torch.allclose(out[1], torch.tensor([4.0, 4.0]))  # padding ignored


def test_cls_pooling_takes_first_token():
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    out = pool(hidden, torch.ones(2, 3, dtype=torch.long), "cls")
    assert torch.equal(out, hidden[:, 0])


def test_contriever_defaults():
    spec = ModelSpec(name="c", source="facebook/contriever")
    assert spec.pooling == "mean"
    assert not spec.normalize and not spec.l2_normalize
    assert spec.score_function == "dot"
    assert spec.max_query_length == spec.max_passage_length == 512


def test_cos_sim_implies_normalisation():
    assert ModelSpec(name="m", source="x", score_function="cos_sim").l2_normalize


def test_unknown_config_key_is_named():
    with pytest.raises(InputError, match=r"models\.m: unknown key\(s\) \['poolin'\]"):
        ModelSpec.from_config("m", {"source": "x", "poolin": "mean"})


def test_bad_pooling_named():
    with pytest.raises(InputError, match="model 'm': pooling"):
        ModelSpec(name="m", source="x", pooling="max")


def test_unknown_model_id_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec(name="nope", source="no-such-org/no-such-model-xyz")
    with pytest.raises(InputError, match="model 'nope': cannot load 'no-such-org/no-such-model"):
        load_encoder(spec)


def test_local_folder_without_model_gives_clear_error(tmp_path):
    spec = ModelSpec(name="empty", source=str(tmp_path))
    with pytest.raises(InputError, match="local folder has no loadable"):
        load_encoder(spec)


def test_real_minilm_loads_and_pools(minilm_path):
    spec = ModelSpec(name="minilm", source=str(minilm_path), normalize=True)
    tok, model = load_encoder(spec)
    enc = tok(
        ["a short sentence", "another one, longer than the first"],
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        hidden = model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).last_hidden_state
    emb = pool(hidden, enc["attention_mask"], "mean")
    assert emb.shape == (2, 384)


def test_query_dtype_defaults_to_dtype():
    spec = ModelSpec(name="m", source="x", dtype="bf16")
    assert spec.dtype_for("query") == spec.dtype_for("passage") == "bf16"
    mixed = ModelSpec(name="m", source="x", dtype="bf16", query_dtype="fp32")
    assert mixed.dtype_for("query") == "fp32" and mixed.dtype_for("passage") == "bf16"
    with pytest.raises(InputError, match="query_dtype must be one of"):
        ModelSpec(name="m", source="x", query_dtype="int8")
