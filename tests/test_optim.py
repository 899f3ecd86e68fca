"""Optimiser groups and exact learning-rate multipliers of the training schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from contriever_repro.errors import InputError
from contriever_repro.training.contrastive import Encoder, MoCo
from contriever_repro.training.optim import build_optimizer, build_scheduler, lr_multiplier


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


# ---------------------------------------------------------------------------- schedules


def test_linear_warmup_then_decay_to_zero():
    f = lr_multiplier("linear", warmup_steps=10, total_steps=110)
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5)  # warmup midpoint
    assert f(10) == pytest.approx(1.0)  # end of warmup
    assert f(60) == pytest.approx(0.5)  # halfway through the decay
    assert f(110) == pytest.approx(0.0)
    assert f(500) == pytest.approx(0.0)


def test_linear_with_min_ratio_ramps_to_one_without_a_jump():
    f = lr_multiplier("linear", warmup_steps=10, total_steps=110, lr_min_ratio=0.2)
    assert f(5) == pytest.approx(0.5)  # the reference gave 0.4 here, then jumped to 1
    assert f(9) == pytest.approx(0.9)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.6)
    assert f(110) == pytest.approx(0.2)
    assert f(1000) == pytest.approx(0.2)


def test_linear_without_warmup_starts_at_one():
    f = lr_multiplier("linear", warmup_steps=0, total_steps=4)
    assert [f(s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_cosine_values():
    f = lr_multiplier("cosine", warmup_steps=10, total_steps=110)
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(60) == pytest.approx(0.5)
    assert f(85) == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)))
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    g = lr_multiplier("cosine", warmup_steps=10, total_steps=110, lr_min_ratio=0.1)
    assert g(60) == pytest.approx(0.55)
    assert g(110) == pytest.approx(0.1)
    assert g(999) == pytest.approx(0.1)


def test_constant_with_warmup():
    f = lr_multiplier("constant", warmup_steps=4, total_steps=None)
    assert [f(s) for s in (0, 2, 4, 10_000)] == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_scheduler_drives_the_optimizer_lr():
    model = _tiny_model()
    opt = build_optimizer(model, lr=1e-3)
    sched = build_scheduler(opt, "linear", warmup_steps=10, total_steps=110)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(0.5e-3)
    assert lrs[10] == pytest.approx(1e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # after 60 steps


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "step"}, "unknown lr schedule"),
        ({"kind": "linear", "warmup_steps": 10, "total_steps": 10}, "total_steps > warmup"),
        ({"kind": "cosine", "warmup_steps": 0, "total_steps": None}, "total_steps"),
        ({"kind": "linear", "warmup_steps": -1, "total_steps": 10}, "warmup_steps"),
        ({"kind": "linear", "total_steps": 10, "lr_min_ratio": 1.5}, "lr_min_ratio"),
    ],
)
def test_schedule_errors(kwargs, match):
    kwargs = {"warmup_steps": 0, **kwargs}
    with pytest.raises(InputError, match=match):
        lr_multiplier(**kwargs)


# ---------------------------------------------------------------------------- optimiser


def test_defaults_are_contriever_adamw():
    opt = build_optimizer(_tiny_model())
    assert isinstance(opt, torch.optim.AdamW)
    (group,) = opt.param_groups
    assert group["lr"] == 5e-5
    assert group["betas"] == (0.9, 0.98)
    assert group["eps"] == 1e-6
    assert group["weight_decay"] == 0.01
    assert len(group["params"]) == 6  # both weights, both biases, LayerNorm weight and bias


def _decay_step(decay_norm_and_bias: bool) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """One AdamW step with zero gradients: only decoupled weight decay moves weights."""
    model = _tiny_model()
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[1].bias.fill_(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5, decay_norm_and_bias=decay_norm_and_bias)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return model, before


def test_weight_decay_applies_to_all_parameters_by_default():
    model, before = _decay_step(decay_norm_and_bias=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5))


def test_weight_decay_can_skip_biases_and_layernorm():
    model, before = _decay_step(decay_norm_and_bias=False)
    for name, p in model.named_parameters():
        factor = (1 - 0.1 * 0.5) if p.ndim > 1 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor)


def test_frozen_key_encoder_is_not_optimised():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    moco = MoCo(Encoder(BertModel(cfg, add_pooling_layer=False)), queue_size=8)
    opt = build_optimizer(moco)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in moco.encoder_q.parameters()}
    with pytest.raises(InputError, match="no parameter"):
        build_optimizer(moco.encoder_k)
