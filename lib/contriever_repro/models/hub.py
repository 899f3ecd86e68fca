"""Hugging Face hub sources: which model sources are hub ids, and how each is pinned.

A hub model is fetched once, on the submit host (rule prefetch_model), into
work_dir/models/hub/<slug> at its `revision`; cluster jobs then read that folder offline.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io import atomic_dir, write_text

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
WORKFLOW_PREFIX = "workflow:"  # a model folder built by this workflow (plan.workflow_model_name)
SLUG_SEP = "--"
log = logging.getLogger(__name__)
HUB_IGNORE = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "flax_model*", "tf_model*", "onnx/*"]
PREFETCH_RECORD = "prefetch.json"


def is_hub_id(source: str) -> bool:
    """True for a Hugging Face hub id (`name` or `org/name`), which must be prefetched.

    `workflow:<name>` is built here; anything that exists on disk, starts like a path
    (`/`, `.`, `~`) or has more than one `/` is a local folder, read in place.
    """
    if not source or source.startswith(WORKFLOW_PREFIX):
        return False
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        return False
    return not Path(source).exists()


@dataclass(frozen=True)
class HubSource:
    """A hub repository the workflow fetches once, on the submit host, into
    work_dir/models/hub/<slug>, at `revision` (None: not pinned)."""

    repo_id: str
    revision: str | None
    users: tuple[str, ...]  # the config keys that use it, e.g. "models.contriever"

    @property
    def slug(self) -> str:
        return hub_slug(self.repo_id)


def hub_slug(repo_id: str) -> str:
    """Folder name of a hub repository: `org/name` -> `org--name`."""
    return repo_id.replace("/", SLUG_SEP)


def revision_warning(source: HubSource) -> str | None:
    """Why a hub model's results are not pinned, or None when its revision is a commit."""
    users = ", ".join(source.users[:2]) + (
        f" and {len(source.users) - 2} more" if len(source.users) > 2 else ""
    )
    if source.revision is None:
        return (
            f"{source.repo_id} ({users}): no revision: results are not pinned (a re-upload "
            "to the hub would change them). Set `revision:` to a commit hash "
            f"(https://huggingface.co/{source.repo_id}/commits/main) on {source.users[0]}"
        )
    if not COMMIT_HASH.fullmatch(source.revision):
        return (
            f"{source.repo_id} ({users}): revision {source.revision!r} is a branch or tag, "
            "not a 40-character commit hash: results are not pinned"
        )
    return None


def hub_snapshot(repo_id: str, revision: str | None, local_dir: Path) -> str:
    """Download one commit of a hub model into local_dir; return that commit's hash.

    The revision (branch, tag or commit) is resolved to a commit first and exactly that
    commit is downloaded, so the record names what was fetched.
    """
    from huggingface_hub import HfApi, snapshot_download

    commit = HfApi().model_info(repo_id, revision=revision).sha
    snapshot_download(repo_id, revision=commit, local_dir=local_dir, ignore_patterns=HUB_IGNORE)
    return commit


def prefetch_model(
    source: HubSource,
    out_dir: str | Path,
    download: Callable[[str, str | None, Path], str] = hub_snapshot,
) -> Path:
    """Fetch a hub model into `out_dir` (atomically) for offline cluster jobs.

    `download(repo_id, revision, folder)` fills the folder and returns the commit it
    fetched (the default is the hub; tests pass a fake). The folder appears only once
    the download is complete, holds `prefetch.json` (repo, requested revision, commit)
    and must load offline with AutoModel; otherwise nothing is left at `out_dir`.
    """
    out_dir = Path(out_dir)
    repo_id, revision = source.repo_id, source.revision
    what = f"{repo_id} ({', '.join(source.users)})"
    warning = revision_warning(source)
    if warning:
        log.warning("%s", warning)
    with atomic_dir(out_dir) as tmp:
        commit = download(repo_id, revision, tmp)
        if revision is not None and COMMIT_HASH.fullmatch(revision) and commit != revision:
            raise InputError(f"{what}: asked for commit {revision} but got {commit}")
        # The prefetched folder must be loadable by the cluster jobs, which run offline.
        from .spec import ModelSpec, load_encoder

        load_encoder(ModelSpec(name=repo_id, source=str(tmp)), offline=True)
        record = {"repo_id": repo_id, "revision": revision, "commit": commit}
        write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", tmp / PREFETCH_RECORD)
    if warning:
        log.warning("%s: fetched commit %s; pin it with `revision: %s`", what, commit, commit)
    log.info("%s: commit %s -> %s", what, commit, out_dir)
    return out_dir
