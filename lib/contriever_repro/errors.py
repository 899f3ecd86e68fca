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


# A full disk is neither bad input (exit 2) nor a reason to retry at once (exit 75): it
# gets its own exit status, EX_IOERR from sysexits.h, so logs and retry rules can tell.
DISK_FULL_EXIT_CODE = 74


class DiskFullError(Exception):
    """An output could not be written because its file system is full (or over quota).

    The message is one line: the file, what it needs, what is free where; the writer
    has already removed its partial output.
    """

    def __init__(
        self,
        path: str | Path,
        free: int,
        needed: int | None,
        reason: str,
        needed_is_bound: bool = False,
    ):
        self.path = str(path)
        self.free = free
        self.needed = needed
        where = Path(path).parent
        if needed is not None and needed > free:
            about = "up to about" if needed_is_bound else "about"
            need = f"needs {about} {fmt_bytes(needed)}, {fmt_bytes(free)} free in {where}/"
        else:
            need = f"needs more than the {fmt_bytes(free)} free in {where}/"
        super().__init__(
            f"{path}: {reason} while writing it: {need} (no partial file was kept); "
            "free space and rerun"
        )


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
