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


def add_run_args(ap) -> None:
    """Arguments shared by every script that writes a run (dense search, BM25)."""
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--drop-identical-ids", dest="drop", action="store_true", default=True)
    ap.add_argument("--keep-identical-ids", dest="drop", action="store_false")
    ap.add_argument("--tag", default="run", help="run name in the TREC file")
    ap.add_argument("--run", required=True, help="run parquet to write")
    ap.add_argument("--trec", required=True, help="TREC run file to write")
    ap.add_argument("--threads", type=int, default=None)


def write_run(run, run_path: str, trec_path: str, tag: str) -> None:
    """Save a run as parquet (the workflow's format) and as a TREC run file."""
    from .io import write_table
    from .search import write_trec

    logging.getLogger("contriever_repro").info(
        "run: %d queries, %d hits", run["query_id"].nunique(), len(run)
    )
    write_table(run, run_path, "run")
    write_trec(run, trec_path, tag)
