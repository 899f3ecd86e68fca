"""The attention-kernel setting: cuDNN attention off by default, set once per process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from contriever_repro import plan
from contriever_repro.errors import InputError
from contriever_repro.models import attention
from contriever_repro.models.spec import ModelSpec, load_encoder


@pytest.fixture
def restore_backends():
    before = attention.sdpa_backends()
    yield
    attention.set_sdpa_backends(before)


def test_setting_enables_exactly_the_named_backends(restore_backends):
    previous = attention.set_sdpa_backends(["efficient", "math"])
    assert attention.sdpa_backends() == ("efficient", "math")
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert not torch.backends.cuda.flash_sdp_enabled()
    assert attention.set_sdpa_backends(previous) == ("efficient", "math")
    assert attention.sdpa_backends() == previous


def test_the_default_leaves_cudnn_attention_out():
    assert "cudnn" not in attention.DEFAULT_SDPA_BACKENDS
    assert plan.sdpa_backends({}) == "flash,efficient,math"
    assert plan.sdpa_backends({"attention": {"sdpa_backends": ["math"]}}) == "math"


def test_search_backend_is_checked_naming_the_key():
    assert plan.search_backend({}) == "faiss"
    assert plan.search_backend({"search_backend": "torch"}) == "torch"
    with pytest.raises(InputError, match="config search_backend: must be one of"):
        plan.search_backend({"search_backend": "faiss-gpu"})


@pytest.mark.parametrize("names", [["flash", "cudnn_attention"], []])
def test_unknown_or_no_backend_is_refused_naming_the_key(names):
    with pytest.raises(InputError, match="attention.sdpa_backends"):
        plan.sdpa_backends({"attention": {"sdpa_backends": names}})


def test_attention_runs_on_cpu_with_the_default_and_fails_without_a_cpu_kernel(
    restore_backends,
):
    q = torch.randn(2, 4, 8, 16)
    attention.set_sdpa_backends(attention.DEFAULT_SDPA_BACKENDS)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    attention.set_sdpa_backends(["math"])
    assert torch.allclose(torch.nn.functional.scaled_dot_product_attention(q, q, q), out, atol=1e-6)
    attention.set_sdpa_backends(["cudnn"])  # the switches are real: no CPU kernel is left
    with pytest.raises(RuntimeError):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_encoders_load_with_sdpa_attention(minilm_path):
    _, model = load_encoder(ModelSpec(name="m", source=str(minilm_path)))
    assert model.config._attn_implementation == "sdpa"


def test_scripts_apply_the_setting_before_any_model_runs(tmp_path):
    """encode.py parses --sdpa-backends and refuses a bad name before loading anything."""
    script = "scripts/encode.py"
    common = ["corpus", "--spec", "{}", "--input", "x", "--out-prefix", str(tmp_path / "e")]
    bad = subprocess.run(
        [sys.executable, script, *common, "--sdpa-backends", "flash,fast"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "--sdpa-backends: unknown SDPA backend(s) ['fast']" in bad.stderr
