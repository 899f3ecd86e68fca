"""One exception type for bad user input, so every message names where the problem is."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input data or configuration: the message names the file, line or key."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
