"""Training checkpoints that let a killed or pre-empted run continue the *same* run.

Layout under `<run_dir>/checkpoints/`::

    step-00001000/
        state.pt        model (query and key encoder, MoCo queue and pointer), optimiser,
                        scheduler, grad scaler, step, next micro-batch, training config
        rank-0.pt ...   per rank: torch CPU and CUDA RNG states, NumPy and `random`
                        states, the rank's next batch index
        meta.json       step, world size, files; written last, so it marks completeness
    latest              name of the newest complete checkpoint (replaced atomically)

The authors saved neither RNG states nor the data position (spec §8.2, §15 row 16), so
their resumed runs saw other samples. Here the data stream is a pure function of
(seed, rank, example index), so the position plus the RNG states make a resumed run
bitwise equal to an uninterrupted one on the same hardware.

Rolling checkpoints are pruned to the newest `keep_last`; those at multiples of
`keep_every` are kept forever (the authors' `step-N` saves).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_path

log = logging.getLogger(__name__)

FORMAT = "contriever-repro-checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every generator the training process draws from (data views use keyed generators)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """Save, find and load the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, rank: int = 0, world_size: int = 1):
        self.root = Path(run_dir) / "checkpoints"
        self.rank = rank
        self.world_size = world_size

    # -------------------------------------------------------------------- finding

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None for a fresh run.

        A `latest` pointer naming a folder that is gone or incomplete is an error, not a
        silent fresh start: that would throw away a long run.
        """
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        path = self.root / name
        if not _STEP_DIR.match(name) or not (path / "meta.json").is_file():
            raise InputError(
                f"names checkpoint {name!r}, which is missing or incomplete; delete the "
                "pointer to start the run afresh, or point it at a complete step-* folder",
                pointer,
            )
        return path

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(
            p
            for p in self.root.iterdir()
            if _STEP_DIR.match(p.name) and (p / "meta.json").is_file()
        )

    # -------------------------------------------------------------------- saving

    def save(
        self,
        step: int,
        shared: dict[str, Any],
        per_rank: dict[str, Any],
        keep_last: int,
        keep_every: int,
        barrier=None,
    ) -> Path:
        """Write one checkpoint: rank 0 writes `shared`, every rank its `per_rank` part.

        `barrier` (a callable) synchronises the ranks between writing and publishing.
        """
        final = self.root / step_dir_name(step)
        tmp = self.root / f".{final.name}.tmp"
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        if barrier:
            barrier()
        torch.save({**per_rank, "rng": rng_state()}, tmp / f"rank-{self.rank}.pt")
        if self.rank == 0:
            torch.save({"format": FORMAT, **shared}, tmp / "state.pt")
        if barrier:
            barrier()
        if self.rank == 0:
            files = sorted(p.name for p in tmp.iterdir())
            expected = {"state.pt", *(f"rank-{r}.pt" for r in range(self.world_size))}
            if not expected <= set(files):
                raise RuntimeError(f"checkpoint {tmp} is missing {sorted(expected - set(files))}")
            meta = {"format": FORMAT, "step": step, "world_size": self.world_size, "files": files}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            with atomic_path(self.root / "latest") as ptr:
                ptr.write_text(final.name + "\n", encoding="utf-8")
            self._prune(keep_last, keep_every)
            log.info("checkpoint saved: %s", final)
        if barrier:
            barrier()
        return final

    def _prune(self, keep_last: int, keep_every: int) -> None:
        done = self.complete()
        rolling = [p for p in done if int(p.name[5:]) % keep_every != 0]
        for old in rolling[:-keep_last] if keep_last else rolling:
            if old.name != done[-1].name:
                shutil.rmtree(old, ignore_errors=True)

    # -------------------------------------------------------------------- loading

    def load(self, path: Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
        """(shared state, this rank's state) of a checkpoint, checked for this world size."""
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise InputError(f"not a checkpoint of this format ({FORMAT})", path / "meta.json")
        if meta["world_size"] != self.world_size:
            raise InputError(
                f"was written by {meta['world_size']} processes but this run has "
                f"{self.world_size}: the per-rank data streams and RNG states cannot be "
                "mapped exactly; resume with the same number of GPUs",
                path,
            )
        shared = torch.load(path / "state.pt", map_location=map_location, weights_only=False)
        mine = torch.load(path / f"rank-{self.rank}.pt", map_location="cpu", weights_only=False)
        return shared, mine
