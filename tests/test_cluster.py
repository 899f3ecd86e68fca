"""Cluster planning in lib: which sources are hub ids, SLURM placement, sized resources."""

from __future__ import annotations

import pytest

from contriever_repro import plan
from contriever_repro.errors import InputError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("source", "hub"),
    [
        ("facebook/contriever", True),
        ("bert-base-uncased", True),
        ("workflow:contriever", False),
        ("/abs/path/model", False),
        ("./model", False),
        ("~/models/x", False),
        ("models/local/contriever", False),  # two slashes: a path, never a hub id
        ("", False),
    ],
)
def test_hub_ids_are_told_from_local_folders(source, hub):
    assert plan.is_hub_id(source) is hub


def test_an_existing_folder_is_local_even_if_it_looks_like_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert plan.is_hub_id("org/model") is False


def test_revision_warning():
    pinned = plan.HubSource("facebook/contriever", COMMIT, ("models.c",))
    assert plan.revision_warning(pinned) is None
    unset = plan.revision_warning(plan.HubSource("facebook/contriever", None, ("models.c",)))
    assert "facebook/contriever (models.c): no revision" in unset and "not pinned" in unset
    assert "huggingface.co/facebook/contriever/commits/main) on models.c" in unset
    branch = plan.HubSource("x/y", "main", ("models.c",))
    assert "branch or tag" in plan.revision_warning(branch)
    short = plan.HubSource("x/y", COMMIT[:7], ("a", "b", "c", "d"))
    assert "(a, b and 2 more)" in plan.revision_warning(short)


def _hub_config(**extra):
    config = {
        "models": {
            "c": {"source": "facebook/contriever", "revision": COMMIT},
            "c2": {"source": "facebook/contriever"},  # same repo: shares c's pin
            "local": {"source": "/data/my-model"},
            "built": {"source": "workflow:contriever"},
            "bm25": {"type": "bm25"},
        },
        "tokenizers": {"bert": {"source": "bert-base-uncased"}},
        "pretraining_corpora": {"wiki": {"kind": "text", "path": "/x.txt"}},
        "pretraining": {
            "contriever": {"init": "bert-base-uncased", "tokenizer": "bert", "sources": ["wiki"]}
        },
    }
    for key, value in extra.items():
        config[key] = {**config[key], **value}
    return config


def test_every_hub_repository_is_fetched_once_at_its_pinned_revision():
    hub = plan.hub_sources(_hub_config())
    assert sorted(hub) == ["bert-base-uncased", "facebook--contriever"]
    c = hub["facebook--contriever"]
    assert (c.repo_id, c.revision, c.users) == (
        "facebook/contriever",
        COMMIT,
        ("models.c", "models.c2"),
    )
    bert = hub["bert-base-uncased"]
    assert bert.revision is None
    assert bert.users == ("tokenizers.bert", "pretraining.contriever.init")


def test_two_pins_of_one_repository_are_an_error():
    config = _hub_config(models={"c2": {"source": "facebook/contriever", "revision": "f" * 40}})
    with pytest.raises(InputError, match="'facebook/contriever' is pinned to different revisions"):
        plan.hub_sources(config)


def test_slurm_placement_splits_gpu_and_cpu_jobs():
    config = {"slurm_account": "acct", "slurm_gpu_partition": "gpu", "slurm_cpu_partition": "cpu"}
    assert plan.slurm_placement(config, gpu=True) == {
        "slurm_account": "acct",
        "slurm_partition": "gpu",
    }
    assert plan.slurm_placement(config, gpu=False) == {
        "slurm_account": "acct",
        "slurm_partition": "cpu",
    }


def test_slurm_placement_sets_nothing_left_unset():
    # Unset keys leave the profile's default-resources (or the plugin's guess) in charge.
    assert plan.slurm_placement({}, gpu=True) == {}
    assert plan.slurm_placement({"slurm_account": None, "slurm_gpu_partition": ""}, True) == {}
    assert plan.slurm_placement({"slurm_gpu_partition": "a100"}, gpu=False) == {}


def test_conversion_memory_follows_the_corpus_size():
    assert plan.convert_mem_mb(8 * 2**20) == 1000 + 5 * 8
    assert plan.convert_mem_mb(3 * 2**30) == 1000 + 5 * 3072  # MS MARCO: ~16 GB
    assert plan.convert_mem_mb(1) == 1005  # rounds up
    assert plan.convert_mem_mb(None, fallback=8000) == 8000  # dry-run: not unpacked yet
    assert plan.convert_mem_mb(8 * 2**20, attempt=2) == 2 * 1040  # retry: twice as much
