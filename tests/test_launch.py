"""Launch commands and SLURM resources of a training job, and the checksum listings."""

import pytest

from contriever_repro.download import md5_from_listing
from contriever_repro.errors import InputError
from contriever_repro.launch import launch_prefix, slurm_resources


def test_one_process_is_plain_python():
    assert launch_prefix("/env/bin/python", 1, 1) == "/env/bin/python"


def test_one_node_uses_standalone_torchrun_with_the_same_interpreter():
    cmd = launch_prefix("/env/bin/python", 1, 8)
    assert (
        cmd == "/env/bin/python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 8"
    )


def test_multi_node_starts_one_torchrun_per_node_meeting_at_the_first_host():
    cmd = launch_prefix("/env/bin/python", 4, 8)
    assert cmd.startswith("srun --overlap --nodes 4 --ntasks-per-node 1 ")
    assert "--nnodes 4 --nproc-per-node 8" in cmd
    assert '--rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d' in cmd
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500' in cmd
    with pytest.raises(ValueError):
        launch_prefix("python", 0, 8)


def test_slurm_resources_request_gpus_per_node():
    assert slurm_resources(4, 8, "cuda", 5) == {
        "nodes": 4,
        "cpus_per_task": 48,
        "gres": "gpu:8",
        "gpu": 0,  # --gpus is a job total; gres carries the per-node count
    }
    assert slurm_resources(1, 2, "cuda", 3)["gpu"] == 2
    assert "gres" not in slurm_resources(1, 1, "cpu", 0)


def test_md5_from_a_wikimedia_style_listing():
    listing = (
        "0123456789abcdef0123456789abcdef  enwiki-20261101-pages-articles-multistream.xml.bz2\n"
        "fedcba9876543210fedcba9876543210  "
        "enwiki-20261101-pages-articles-multistream-index.txt.bz2\n"
    )
    name = "enwiki-20261101-pages-articles-multistream-index.txt.bz2"
    assert md5_from_listing(listing, name) == "fedcba9876543210fedcba9876543210"
    with pytest.raises(InputError, match="lists no md5 for other.bz2"):
        md5_from_listing(listing, "other.bz2", "md5sums.txt")
    with pytest.raises(InputError, match=r"md5sums.txt:1: not an md5"):
        md5_from_listing("xyz  a.bz2\n", "a.bz2", "md5sums.txt")
