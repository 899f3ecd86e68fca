"""Hugging Face hub sources: which model sources are hub ids, and how each is pinned.

A hub model is fetched once, on the submit host (rule prefetch_model), into
work_dir/models/hub/<slug> at its `revision`; cluster jobs then read that folder offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
WORKFLOW_PREFIX = "workflow:"  # a model folder built by this workflow (plan.workflow_model_name)
SLUG_SEP = "--"


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
