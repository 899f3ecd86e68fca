import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from contriever_repro.errors import InputError
from contriever_repro.models.hub import prefetch_model
from contriever_repro.models.spec import (
    ModelSpec,
    choose_device,
    load_encoder,
    pool,
)
from contriever_repro.plan import HubSource


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


# ------------------------------------------------------------- device choice


def test_a_job_given_gpus_that_sees_no_cuda_fails_at_once():
    with pytest.raises(InputError, match="given 1 GPU.*CUDA is not visible"):
        choose_device("auto", gpus=1, cuda_available=False)
    with pytest.raises(InputError, match="given 2 GPU"):
        choose_device("cuda", gpus=2, cuda_available=False)


def test_cpu_only_where_the_config_says_so():
    assert choose_device("auto", gpus=0, cuda_available=False) == "cpu"
    assert choose_device("cpu", gpus=1, cuda_available=False) == "cpu"  # said explicitly
    assert choose_device("cpu", gpus=0, cuda_available=True) == "cpu"
    with pytest.raises(InputError, match="device: cuda"):
        choose_device("cuda", gpus=0, cuda_available=False)


def test_cuda_when_visible():
    assert choose_device("auto", gpus=0, cuda_available=True) == "cuda"
    assert choose_device("auto", gpus=1, cuda_available=True) == "cuda"
    assert choose_device("cuda", gpus=1, cuda_available=True) == "cuda"


def test_unknown_device_is_named():
    with pytest.raises(InputError, match="device must be one of"):
        choose_device("gpu", gpus=0, cuda_available=True)


# ------------------------------------------------------------- hub prefetch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _source(revision=COMMIT):
    return HubSource("org/model", revision, ("models.m",))


class FakeHub:
    """Stands in for the hub: copies a real model folder and records what was asked."""

    def __init__(self, model_dir: Path, commit: str = COMMIT, fail_after_copy=False):
        self.model_dir, self.commit, self.fail_after_copy = model_dir, commit, fail_after_copy
        self.calls = []

    def __call__(self, repo_id, revision, local_dir):
        self.calls.append((repo_id, revision, Path(local_dir)))
        shutil.copytree(self.model_dir, local_dir, dirs_exist_ok=True)
        if self.fail_after_copy:
            raise OSError("connection reset by peer")
        return self.commit


def test_prefetch_passes_the_revision_and_the_result_loads_offline(
    minilm_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(minilm_path)
    out = tmp_path / "models" / "hub" / "m"
    assert prefetch_model(_source(), out, download=hub) == out
    assert [(r, v) for r, v, _ in hub.calls] == [("org/model", COMMIT)]
    assert hub.calls[0][2] != out  # downloaded beside, then renamed into place
    record = json.loads((out / "prefetch.json").read_text())
    assert record == {"repo_id": "org/model", "revision": COMMIT, "commit": COMMIT}
    tok, model = load_encoder(ModelSpec(name="m", source=str(out)), offline=True)
    assert model.config.hidden_size == 384
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # no temporary left


def test_failed_prefetch_leaves_nothing_and_keeps_a_previous_copy(minilm_path, tmp_path):
    out = tmp_path / "hub" / "m"
    with pytest.raises(OSError, match="connection reset"):
        prefetch_model(_source(), out, download=FakeHub(minilm_path, fail_after_copy=True))
    assert not out.exists() and list(out.parent.iterdir()) == []
    prefetch_model(_source(), out, download=FakeHub(minilm_path))
    with pytest.raises(OSError):
        prefetch_model(_source(), out, download=FakeHub(minilm_path, fail_after_copy=True))
    assert json.loads((out / "prefetch.json").read_text())["commit"] == COMMIT


def test_prefetch_refuses_a_folder_that_does_not_load(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "hub" / "m"
    with pytest.raises(InputError, match="model 'org/model': cannot load"):
        prefetch_model(_source(), out, download=FakeHub(empty))
    assert not out.exists()


def test_prefetch_refuses_another_commit_than_pinned(minilm_path, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(
        InputError, match=r"org/model \(models.m\): asked for commit 0123.* but got f{40}"
    ):
        prefetch_model(_source(), out, download=FakeHub(minilm_path, "f" * 40))
    assert not out.exists()


def test_unpinned_prefetch_warns_and_names_the_commit_to_pin(minilm_path, tmp_path, caplog):
    hub = FakeHub(minilm_path)
    with caplog.at_level(logging.WARNING, logger="contriever_repro.models.spec"):
        prefetch_model(_source(None), tmp_path / "m", download=hub)
    assert hub.calls[0][1] is None
    text = caplog.text
    assert "org/model (models.m): no revision: results are not pinned" in text
    assert f"pin it with `revision: {COMMIT}`" in text
    assert json.loads((tmp_path / "m" / "prefetch.json").read_text())["revision"] is None


def test_offline_load_refuses_a_hub_id_without_contacting_the_hub():
    spec = ModelSpec(name="c", source="facebook/contriever")
    with pytest.raises(InputError, match="model 'c': 'facebook/contriever' is not a local folder"):
        load_encoder(spec, offline=True)


def test_revision_is_part_of_the_spec():
    spec = ModelSpec.from_config("c", {"source": "facebook/contriever", "revision": COMMIT})
    assert spec.revision == COMMIT and spec.to_dict()["revision"] == COMMIT
