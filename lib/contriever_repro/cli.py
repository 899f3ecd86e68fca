"""What every thin script needs: logging to the job log and one clean exit on bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from .errors import InputError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main; bad input becomes one readable line and exit status 2."""
    setup_logging()
    try:
        main()
    except InputError as err:
        logging.getLogger("contriever_repro").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


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
