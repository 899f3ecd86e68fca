"""ASAM, adaptive sharpness-aware minimisation (Kwon et al. 2021, arXiv 2102.11600).

The paper fine-tunes on MS MARCO "with the ASAM optimizer" (appendix A.2), but the
released code has no ASAM: only a leftover `--rho 0.05` flag (spec §10.4). This wrapper
adds it around the AdamW the engine already builds. One update takes two passes:

1. forward/backward on the batch at w, then `ascend()`: w ← w + e(w), with
   e(w) = rho · T_w² · g / ‖T_w · g‖₂ and T_w = |w| + eta elementwise (adaptive=True;
   plain SAM, T_w = 1, with adaptive=False). The norm is global: one norm over every
   parameter of the optimizer's groups that requires grad and has a gradient; the
   others are left alone. A zero (or non-finite) norm gives e = 0: no NaN is written into
   the weights and the norm is returned for the caller to log or act on.
2. zero_grad, forward/backward on the same batch at w + e(w), then `descend()`: w is put
   back bit for bit from a saved copy (not by subtraction, which rounds), so the inner
   `optimizer.step()` that follows applies the perturbed-point gradient to the original
   weights, weight decay included.

Usage contract for the engine:
* The gradient seen by `ascend()` must be the full step gradient: all micro-batches run
  (accumulation-summed) and, with DDP, all-reduced (sync on the last micro-batch). Then
  every rank holds the same gradient and the same weights, so every rank computes the
  same e(w) with no extra communication; the second pass all-reduces as usual.
* The loop is: micro-batches → `ascend()` → zero_grad → the same micro-batches again →
  `descend()` → `optimizer.step()` → scheduler step. The lr schedule, clipping and the
  step counter belong to the inner optimizer; `param_groups` is passed through. Clip
  (global norm) after `descend()`: clipping before `ascend()` would not change e, which
  is scale-free in g. The wrapper registers a step pre-hook on the inner optimizer that
  refuses `step()` while the weights are perturbed.
* `state_dict()` is the inner optimizer's, with live tensors as torch returns them:
  serialise (torch.save) or deep-copy it before training on.
* fp16 with a GradScaler is not supported: the norm needs unscaled gradients, and an
  overflow-skipped step would leave the weights perturbed. The engine refuses fp16 with
  ASAM; bf16 autocast and fp32 are fine (the norm is accumulated in float32).
* Cost: two forward/backward passes per step and one extra copy of the trainable weights.

Defaults (the paper gives no values):
* rho = 0.05, the only value the authors' code mentions (`--rho 0.05`). Kwon et al. used
  rho 0.5 for CIFAR with adaptive scaling, where ‖e‖ scales with |w|; with the
  |w|-scaling, 0.05 is a conservative perturbation for fine-tuning a pre-trained model.
  It is a setting (finetuning.<name>.rho), not a finding.
* eta = 0.01 as in the ASAM paper.
Deviation from the ASAM authors' code (SamsungLabs/ASAM): it scales by |w| + eta only the
parameters whose name contains "weight" (biases get T = 1); this wrapper sees no names
and scales every parameter, as Algorithm 1 of the paper writes it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError


class ASAM:
    """Wraps a torch optimizer (AdamW). One step = two forward/backward passes."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        rho: float = 0.05,
        eta: float = 0.01,
        adaptive: bool = True,
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"ASAM wraps a torch optimizer, got {type(optimizer).__name__}")
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not math.isfinite(rho):
            raise InputError(f"ASAM rho must be a finite number > 0, got {rho!r}")
        if rho <= 0:
            raise InputError(f"ASAM rho must be > 0, got {rho!r}")
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta):
            raise InputError(f"ASAM eta must be a finite number >= 0, got {eta!r}")
        if eta < 0:
            raise InputError(f"ASAM eta must be >= 0, got {eta!r}")
        self.optimizer = optimizer
        self.rho = float(rho)
        self.eta = float(eta)
        self.adaptive = bool(adaptive)
        # The original weights while perturbed (between ascend and descend), else None.
        self._saved: dict[torch.Tensor, torch.Tensor] | None = None
        # An inner step taken while perturbed would update w + e(w) and then be undone by
        # descend: refuse it rather than lose an update silently.
        optimizer.register_step_pre_hook(self._refuse_step_while_perturbed)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def perturbed(self) -> bool:
        """True between `ascend()` and `descend()`."""
        return self._saved is not None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _params(self) -> list[torch.Tensor]:
        return [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.requires_grad and p.grad is not None
        ]

    def _scaled_grad(self, p: torch.Tensor) -> torch.Tensor:
        """T_w · g as a new tensor (the gradient itself is never modified)."""
        if self.adaptive:
            return p.abs().add_(self.eta).mul_(p.grad)
        return p.grad.clone()

    @torch.no_grad()
    def ascend(self) -> float:
        """After the first backward: w ← w + e(w). Returns ‖T_w · g‖₂ (‖g‖₂ for SAM)."""
        if self._saved is not None:
            raise RuntimeError("ASAM.ascend() called twice without descend()")
        params = self._params()
        if not params:
            self._saved = {}
            return 0.0
        device = params[0].device
        # Per-parameter norms accumulated in at least float32 (bf16 weights), combined in
        # float64 on one device (the parameters may be spread over several).
        norms = [
            torch.linalg.vector_norm(
                self._scaled_grad(p), dtype=torch.promote_types(p.dtype, torch.float32)
            ).to(device, torch.float64)
            for p in params
        ]
        norm = torch.linalg.vector_norm(torch.stack(norms)).item()
        self._saved = {}
        if norm == 0.0 or not math.isfinite(norm):
            return norm
        scale = self.rho / norm
        for p in params:
            # T_w² g = T_w · (T_w g), both T_w from the unperturbed w; recomputed rather
            # than kept from the norm loop to hold one gradient-sized temporary at a time.
            e = self._scaled_grad(p)
            if self.adaptive:
                e.mul_(p.abs().add_(self.eta))
            self._saved[p] = p.detach().clone()
            p.add_(e, alpha=scale)
        return norm

    @torch.no_grad()
    def descend(self) -> None:
        """After the second backward: restore the original w exactly (gradients kept)."""
        if self._saved is None:
            raise RuntimeError("ASAM.descend() called without ascend()")
        for p, original in self._saved.items():
            p.copy_(original)
        self._saved = None

    def _refuse_step_while_perturbed(self, optimizer, args, kwargs) -> None:
        if self._saved is not None:
            raise RuntimeError(
                "optimizer.step() called between ASAM.ascend() and descend(): call descend() first"
            )

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state; the perturbation is transient and never saved."""
        if self._saved is not None:
            raise RuntimeError("ASAM state cannot be saved between ascend() and descend()")
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._saved is not None:
            raise RuntimeError("ASAM state cannot be loaded between ascend() and descend()")
        self.optimizer.load_state_dict(state)
