"""AdamW and the learning-rate schedules of Contriever's training code (spec §7).

Defaults are what ran: AdamW(lr 5e-5, betas (0.9, 0.98), eps 1e-6, weight decay 0.01) with
weight decay on every parameter, biases and LayerNorm included (the reference has no
parameter groups). The schedules are multipliers of the base lr for `LambdaLR`, stepped
once per optimiser step; step 0 is the first update, so with warmup it runs at lr 0
exactly as in the reference.

Two fixes to the reference:
* linear warmup ramps 0 → 1 whatever `lr_min_ratio` is (the reference ramped to
  1 − ratio and then jumped to 1 when ratio > 0);
* the cosine schedule works (the reference crashed: `math` was not imported). We use the
  usual half-cosine ratio + (1 − ratio)·½(1 + cos(π·progress)) rather than the
  reference's intended ratio + (1 − ratio)·cos(π/2·progress); both go from 1 to `ratio`,
  the half-cosine with zero slope at both ends, as in SGDR and Hugging Face.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..errors import InputError

SCHEDULES = ("linear", "cosine", "constant")


def build_optimizer(
    model: nn.Module,
    lr: float = 5e-5,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    decay_norm_and_bias: bool = True,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad (MoCo's key encoder is left out).

    `decay_norm_and_bias=False` puts every parameter with ≤ 1 dimension (biases,
    LayerNorm weights) in a group without weight decay, the common BERT practice that
    Contriever did not follow. `fused` runs the update as one CUDA kernel per group
    instead of a dozen per parameter tensor (the same arithmetic; GPU runs use it).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise InputError(f"{type(model).__name__} has no parameter that requires grad")
    if decay_norm_and_bias:
        groups = [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    else:
        groups = [
            {"params": [p for _, p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for _, p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None
    )


def lr_multiplier(
    kind: str,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    lr_min_ratio: float = 0.0,
) -> Callable[[int], float]:
    """The schedule as a function of the step (0-based count of optimiser steps taken).

    Warmup: step / warmup_steps. Then linear: 1 → ratio at total_steps; cosine:
    ratio + (1 − ratio)·½(1 + cos(π·progress)); constant: 1. Past total_steps the
    multiplier stays at ratio.
    """
    if kind not in SCHEDULES:
        raise InputError(f"unknown lr schedule {kind!r}; expected one of {SCHEDULES}")
    if warmup_steps < 0:
        raise InputError(f"warmup_steps must be ≥ 0, got {warmup_steps}")
    if not 0.0 <= lr_min_ratio <= 1.0:
        raise InputError(f"lr_min_ratio must be in [0, 1], got {lr_min_ratio}")
    if kind != "constant" and (total_steps is None or total_steps <= warmup_steps):
        raise InputError(
            f"{kind} schedule needs total_steps > warmup_steps, got total_steps={total_steps} "
            f"and warmup_steps={warmup_steps}"
        )
    ratio = float(lr_min_ratio)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 + (ratio - 1.0) * progress
        return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str = "linear",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    lr_min_ratio: float = 0.0,
) -> LambdaLR:
    """`LambdaLR` with `lr_multiplier`; call `.step()` after every `optimizer.step()`."""
    return LambdaLR(optimizer, lr_multiplier(kind, warmup_steps, total_steps, lr_min_ratio))


def build_optimisation(cfg, model: torch.nn.Module, device: torch.device):
    """(AdamW, lr schedule, grad scaler) of an experiment; fp16 alone scales the loss."""
    optimizer = build_optimizer(
        model,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        decay_norm_and_bias=cfg.decay_norm_and_bias,
        fused=device.type == "cuda",
    )
    scheduler = build_scheduler(
        optimizer, cfg.schedule, cfg.warmup_steps, cfg.steps, cfg.lr_min_ratio
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    return optimizer, scheduler, scaler
