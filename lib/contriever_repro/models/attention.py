"""Which attention kernels the encoders run on: an explicit, per-process setting.

Every encoder is loaded with PyTorch's scaled-dot-product attention (SDPA), which picks
a kernel per call among the enabled backends. On H100/H200 with bf16/fp16 inputs it
picks cuDNN attention first; cuDNN builds a plan for every new padded length, and
pre-training's random crops bring a new length with almost every batch: measured on an
H200, 40 ms of CPU time per attention call against 0.1 ms of GPU work, so a bf16 MoCo
step took 2-7x longer than in TF32 (issue 12). The flash and memory-efficient kernels
have no such per-shape cost, so the default enables those (and the math fallback, which
CPU and odd shapes need) and leaves cuDNN off. `attention.sdpa_backends` in the config
sets the list; scripts apply it once at start (cli.add_attention_args).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from ..errors import InputError

log = logging.getLogger(__name__)

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
DEFAULT_SDPA_BACKENDS = ("flash", "efficient", "math")
ATTN_IMPLEMENTATION = "sdpa"


def _switches() -> dict:
    """(is_enabled, enable) of each backend's process-wide switch in torch.backends.cuda
    (the switches also govern CPU SDPA's choice between its flash and math kernels)."""
    import torch

    cuda = torch.backends.cuda
    return {
        "flash": (cuda.flash_sdp_enabled, cuda.enable_flash_sdp),
        "efficient": (cuda.mem_efficient_sdp_enabled, cuda.enable_mem_efficient_sdp),
        "cudnn": (cuda.cudnn_sdp_enabled, cuda.enable_cudnn_sdp),
        "math": (cuda.math_sdp_enabled, cuda.enable_math_sdp),
    }


def check_sdpa_backends(names: Iterable[str], where: str = "attention.sdpa_backends") -> tuple:
    """The backend names as a tuple, or an InputError naming `where`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names)
    unknown = [n for n in names if n not in SDPA_BACKENDS]
    if unknown:
        raise InputError(f"{where}: unknown SDPA backend(s) {unknown}; known: {SDPA_BACKENDS}")
    if not names:
        raise InputError(f"{where}: enable at least one SDPA backend (e.g. math)")
    return names


def sdpa_backends() -> tuple[str, ...]:
    """The backends enabled now, in SDPA_BACKENDS order."""
    return tuple(name for name, (enabled, _) in _switches().items() if enabled())


def set_sdpa_backends(
    names: Sequence[str] | str, where: str = "attention.sdpa_backends"
) -> tuple[str, ...]:
    """Enable exactly `names` (checked; errors name `where`) for the rest of the process;
    returns the previous set (so a caller can put it back)."""
    names = check_sdpa_backends(names, where)
    before = sdpa_backends()
    for name, (_, enable) in _switches().items():
        enable(name in names)
    log.info("SDPA attention backends: %s", ", ".join(sdpa_backends()))
    return before


def from_pretrained(model_cls, source: str, **kwargs):
    """`model_cls.from_pretrained(source, attn_implementation="sdpa", ...)`, falling back
    to the architecture's default attention (with a warning) when it has no SDPA path."""
    try:
        return model_cls.from_pretrained(source, attn_implementation=ATTN_IMPLEMENTATION, **kwargs)
    except ValueError as err:
        if "attn_implementation" not in str(err) and "sdpa" not in str(err).lower():
            raise
        log.warning("%s has no SDPA attention, using its default: %s", source, err)
        return model_cls.from_pretrained(source, **kwargs)
