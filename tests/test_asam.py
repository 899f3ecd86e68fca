"""ASAM wrapper: one step against the formula worked by hand, exact restore, edge cases,
checkpoint round trip and 2-process DDP agreement."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from contriever_repro.errors import InputError
from contriever_repro.training.asam import ASAM

F64 = torch.float64
X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
Y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0], [0.5, -0.5]], dtype=F64)
# One weight is exactly 0, so T_w there is eta alone.
W0 = torch.tensor([[0.2, -0.4, 0.1], [0.3, 0.0, -0.5]], dtype=F64)
B0 = torch.tensor([0.1, -0.2], dtype=F64)


def linear(weight=W0, bias=B0) -> nn.Linear:
    layer = nn.Linear(3, 2, dtype=F64)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def backward(model: nn.Module) -> None:
    nn.functional.mse_loss(model(X), Y).backward()


def hand_grads(w, b):
    """d/dw of mean((X wᵀ + b − Y)²), written out."""
    dy = 2 * (X @ w.T + b - Y) / Y.numel()
    return dy.T @ X, dy.sum(0)


def hand_perturbed(w, b, rho, eta, adaptive):
    """w + e(w), e = rho T² g / ‖T g‖ with T = |w| + eta (or 1), and ‖T g‖."""
    gw, gb = hand_grads(w, b)
    tw = w.abs() + eta if adaptive else torch.ones_like(w)
    tb = b.abs() + eta if adaptive else torch.ones_like(b)
    norm = math.sqrt(((tw * gw) ** 2).sum() + ((tb * gb) ** 2).sum())
    return w + rho * tw**2 * gw / norm, b + rho * tb**2 * gb / norm, norm


def asam_step(asam: ASAM, model: nn.Module) -> float:
    asam.zero_grad()
    backward(model)
    norm = asam.ascend()
    asam.zero_grad()
    backward(model)
    asam.descend()
    asam.optimizer.step()
    return norm


@pytest.mark.parametrize("adaptive", [True, False])
def test_sgd_step_equals_the_formula_by_hand(adaptive):
    rho, eta, lr = 0.5, 0.01, 0.1
    model = linear()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, eta=eta, adaptive=adaptive)
    norm = asam_step(asam, model)

    pw, pb, hand_norm = hand_perturbed(W0, B0, rho, eta, adaptive)
    gw, gb = hand_grads(pw, pb)  # the gradient at the perturbed point ...
    torch.testing.assert_close(model.weight.detach(), W0 - lr * gw)  # ... from the original w
    torch.testing.assert_close(model.bias.detach(), B0 - lr * gb)
    assert norm == pytest.approx(hand_norm, rel=1e-12)
    plain_w = W0 - lr * hand_grads(W0, B0)[0]
    assert (model.weight.detach() - plain_w).abs().max() > 1e-3  # not a plain SGD step


def test_without_adaptive_the_perturbation_is_sam():
    """adaptive=False: e = rho g / ‖g‖, the global gradient norm over weight and bias."""
    rho = 0.05
    model = linear()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=rho, adaptive=False)
    backward(model)
    gw, gb = model.weight.grad.clone(), model.bias.grad.clone()
    norm = asam.ascend()
    g_norm = torch.cat([gw.flatten(), gb]).norm().item()
    assert norm == pytest.approx(g_norm, rel=1e-12)
    torch.testing.assert_close(model.weight.detach(), W0 + rho * gw / g_norm)
    torch.testing.assert_close(model.bias.detach(), B0 + rho * gb / g_norm)
    e = torch.cat([model.weight.detach().flatten() - W0.flatten(), model.bias.detach() - B0])
    assert e.norm().item() == pytest.approx(rho, rel=1e-9)
    asam.descend()


def test_two_adamw_steps_equal_the_formula_by_hand():
    rho, eta, lr, (b1, b2), eps, wd = 0.5, 0.01, 1e-2, (0.9, 0.98), 1e-6, 0.01
    model = linear()
    inner = torch.optim.AdamW(model.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    asam = ASAM(inner, rho=rho, eta=eta)
    asam_step(asam, model)
    asam_step(asam, model)

    w, b = W0.clone(), B0.clone()
    m = [torch.zeros_like(w), torch.zeros_like(b)]
    v = [torch.zeros_like(w), torch.zeros_like(b)]
    for t in (1, 2):
        pw, pb, _ = hand_perturbed(w, b, rho, eta, adaptive=True)
        new = []
        for i, (p, g) in enumerate(zip((w, b), hand_grads(pw, pb), strict=True)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            new.append(p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps))
        w, b = new
    torch.testing.assert_close(model.weight.detach(), w)
    torch.testing.assert_close(model.bias.detach(), b)


def test_ascend_then_descend_restores_the_weights_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 8))
    before = [p.detach().clone() for p in model.parameters()]
    asam = ASAM(torch.optim.AdamW(model.parameters(), lr=1e-3), rho=0.05)
    model(torch.randn(6, 32)).square().mean().backward()
    t_g = [(p.detach().abs() + 0.01) * p.grad for p in model.parameters()]
    norm = torch.cat([t.flatten() for t in t_g]).norm()
    params = list(model.parameters())
    e = [0.05 * (p.detach().abs() + 0.01) * t / norm for p, t in zip(params, t_g, strict=True)]
    asam.ascend()
    for p, b, e_p in zip(model.parameters(), before, e, strict=True):
        torch.testing.assert_close(p.detach(), b + e_p)
    # Subtracting e would not give the originals back exactly in float32 ...
    assert any(not torch.equal(b + e_p - e_p, b) for b, e_p in zip(before, e, strict=True))
    asam.zero_grad()
    model(torch.randn(6, 32)).square().mean().backward()
    asam.descend()
    # ... restoring from the saved copy does.
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not asam.perturbed


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    model = linear()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert asam.ascend() == 0.0
    assert torch.equal(model.weight.detach(), W0) and torch.equal(model.bias.detach(), B0)
    asam.descend()
    # |w| + eta = 0 (zero weights, eta 0) also makes the scaled norm 0.
    model = linear(torch.zeros(2, 3, dtype=F64), torch.zeros(2, dtype=F64))
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), eta=0.0)
    backward(model)
    assert asam.ascend() == 0.0
    assert not any(p.isnan().any() or p.abs().sum() != 0 for p in model.parameters())
    asam.descend()


def test_non_finite_gradient_is_reported_and_leaves_the_weights_alone():
    model = linear()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1))
    backward(model)
    model.weight.grad[0, 0] = float("inf")
    assert math.isinf(asam.ascend())
    assert torch.equal(model.weight.detach(), W0) and torch.equal(model.bias.detach(), B0)
    asam.descend()


def test_parameters_without_gradient_are_untouched_and_not_in_the_norm():
    rho, eta = 0.5, 0.01
    model = linear()
    unused = nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))  # in the optimizer, no grad
    frozen = nn.Parameter(torch.tensor([3.0, 4.0], dtype=F64), requires_grad=False)
    frozen.grad = torch.tensor([5.0, 5.0], dtype=F64)  # a stale grad must not count either
    inner = torch.optim.SGD([*model.parameters(), unused, frozen], lr=0.1)
    asam = ASAM(inner, rho=rho, eta=eta)
    backward(model)
    norm = asam.ascend()
    pw, pb, hand_norm = hand_perturbed(W0, B0, rho, eta, adaptive=True)
    assert norm == pytest.approx(hand_norm, rel=1e-12)
    torch.testing.assert_close(model.weight.detach(), pw)
    torch.testing.assert_close(model.bias.detach(), pb)
    assert unused.grad is None
    assert torch.equal(unused.detach(), torch.tensor([1.0, -2.0], dtype=F64))
    assert torch.equal(frozen.detach(), torch.tensor([3.0, 4.0], dtype=F64))
    asam.descend()


def test_state_dict_round_trip_gives_the_same_next_step():
    def fresh(weight=W0, bias=B0):
        model = linear(weight, bias)
        return model, ASAM(torch.optim.AdamW(model.parameters(), lr=1e-2), rho=0.3)

    model, asam = fresh()
    asam_step(asam, model)
    saved = copy.deepcopy(asam.state_dict())  # as written to a checkpoint
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    asam_step(asam, model)

    resumed, resumed_asam = fresh(weight, bias)
    resumed_asam.load_state_dict(saved)
    asam_step(resumed_asam, resumed)
    assert torch.equal(resumed.weight, model.weight) and torch.equal(resumed.bias, model.bias)
    assert resumed_asam.param_groups[0]["lr"] == 1e-2  # the passthrough

    # No checkpoint, load or inner step while perturbed.
    backward(model)
    asam.ascend()
    with pytest.raises(RuntimeError, match="between ascend"):
        asam.state_dict()
    with pytest.raises(RuntimeError, match="between ascend"):
        asam.load_state_dict(saved)
    with pytest.raises(RuntimeError, match="descend"):
        asam.optimizer.step()
    with pytest.raises(RuntimeError, match="twice"):
        asam.ascend()
    asam.descend()
    with pytest.raises(RuntimeError, match="without ascend"):
        asam.descend()


def test_scheduler_on_the_inner_optimizer_reaches_the_wrapper():
    model = linear()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=1.0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(asam.optimizer, lambda step: 0.5**step)
    asam_step(asam, model)
    scheduler.step()
    assert asam.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": "0.05"}, "rho"),
        ({"eta": -0.01}, "eta"),
        ({"eta": float("inf")}, "eta"),
    ],
)
def test_bad_rho_or_eta_is_refused(kwargs, word):
    with pytest.raises(InputError, match=word):
        ASAM(torch.optim.SGD(linear().parameters(), lr=0.1), **kwargs)


# ---------------------------------------------------------------------------- distributed

WORLD, STEPS, PER_RANK = 2, 3, 4


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(STEPS, WORLD * PER_RANK, 4, generator=gen)
    return x, x.sum(-1, keepdim=True).sin() + 0.1 * torch.randn(
        STEPS, WORLD * PER_RANK, 1, generator=gen
    )


def _engine_pass(ddp, x, y, micro: int) -> None:
    """All micro-batches of one pass, gradients synced on the last one only."""
    size = len(x) // micro
    for i in range(micro):
        sync = contextlib.nullcontext() if i == micro - 1 else ddp.no_sync()
        with sync:
            part = slice(i * size, (i + 1) * size)
            (nn.functional.mse_loss(ddp(x[part]), y[part]) / micro).backward()


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = _mlp()
        ddp = DistributedDataParallel(model)
        asam = ASAM(torch.optim.AdamW(model.parameters(), lr=1e-2), rho=0.1)
        x, y = _data()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        for step in range(STEPS):
            asam.zero_grad()
            _engine_pass(ddp, x[step, mine], y[step, mine], micro=2)
            asam.ascend()
            asam.zero_grad()
            _engine_pass(ddp, x[step, mine], y[step, mine], micro=2)
            asam.descend()
            asam.optimizer.step()
        torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_agree_with_one_process_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = _mlp()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    asam = ASAM(torch.optim.AdamW(model.parameters(), lr=1e-2), rho=0.1)
    x, y = _data()
    for step in range(STEPS):
        asam.zero_grad()
        nn.functional.mse_loss(model(x[step]), y[step]).backward()
        asam.ascend()
        asam.zero_grad()
        nn.functional.mse_loss(model(x[step]), y[step]).backward()
        asam.descend()
        asam.optimizer.step()
    for name, value in model.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], value, rtol=0, atol=1e-6)
        assert not torch.equal(value, start[name])  # the steps moved every tensor
