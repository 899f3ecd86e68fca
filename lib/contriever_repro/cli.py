"""What every thin script needs: logging to the job log and one clean exit on bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from .errors import DISK_FULL_EXIT_CODE, DiskFullError, InputError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main; bad input becomes one readable line and exit status 2, a full
    disk one line and exit status 74 (DISK_FULL_EXIT_CODE)."""
    setup_logging()
    try:
        main()
    except InputError as err:
        _fail(err, 2)
    except DiskFullError as err:
        _fail(err, DISK_FULL_EXIT_CODE)


def _fail(err: Exception, status: int) -> None:
    logging.getLogger("contriever_repro").error("%s", err)
    print(f"error: {err}", file=sys.stderr)
    sys.exit(status)


def set_threads(n: int | None) -> None:
    """Respect the cores Snakemake gave the job (torch and FAISS default to all cores)."""
    if not n:
        return
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
