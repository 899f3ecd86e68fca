"""Which weights a model folder holds, as a short hash, and the check that mined
negatives come from the phase-1 model a phase-2 run names.

A folder path says nothing about its content (phase 1 may be retrained in place), so
the fingerprint hashes the bytes of the weights and the config.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..data.mined import read_mined
from ..errors import InputError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
FINGERPRINT_CHARS = 16
_CHUNK = 1 << 20


def model_fingerprint(folder: str | Path) -> str:
    """sha256 (first 16 hex digits) over config.json and the weight files
    (*.safetensors, *.bin) of a Hugging Face model folder, names included, in sorted
    order; files are streamed, so multi-GB checkpoints need no memory."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("model folder does not exist", folder)
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if not weights:
        raise InputError("model folder has no weight files (*.safetensors, *.bin)", folder)
    config = folder / "config.json"
    if not config.is_file():
        raise InputError("model folder has no config.json", folder)
    digest = hashlib.sha256()
    for path in [config, *weights]:
        digest.update(path.name.encode("utf-8") + b"\0")
        digest.update(str(path.stat().st_size).encode("ascii") + b"\0")
        _stream(digest, path)
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def _stream(digest, path: Path) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)


def file_fingerprint(path: str | Path) -> str:
    """sha256 (first 16 hex digits) of one file's bytes, e.g. the training records."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    digest = hashlib.sha256()
    _stream(digest, path)
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def check_mined_by(path: str | Path, model_folder: str | Path) -> dict:
    """Raise InputError unless the negatives in `path` were mined with the model in
    `model_folder`; return the mining provenance."""
    _, meta = read_mined(path)
    mined_with = meta.get("model_fingerprint")
    if not mined_with:
        raise InputError("mining provenance has no model_fingerprint", path)
    phase1 = model_fingerprint(model_folder)
    if mined_with != phase1:
        raise InputError(
            f"negatives in {path} were mined with model {mined_with} but phase 1 is "
            f"{phase1} ({model_folder}): re-run mining"
        )
    return meta
