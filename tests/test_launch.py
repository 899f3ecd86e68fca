"""Launch commands and SLURM resources of a training job, and the checksum listings."""

import os

import pytest

from contriever_repro.data.download import md5_from_listing
from contriever_repro.errors import InputError
from contriever_repro.training.launch import (
    exit_code,
    first_host,
    launch_prefix,
    rendezvous,
    slurm_resources,
)


def test_one_process_is_plain_python():
    assert launch_prefix("/env/bin/python", 1, 1) == "/env/bin/python"


def test_one_node_uses_standalone_torchrun_with_the_same_interpreter():
    cmd = launch_prefix("/env/bin/python", 1, 8)
    assert (
        cmd == "/env/bin/python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 8"
    )


def test_multi_node_is_one_srun_step_with_one_launcher_per_node():
    cmd = launch_prefix("/env/bin/python", 4, 8, cpus_per_node=48)
    assert cmd == (
        "srun --nodes 4 --ntasks 4 --ntasks-per-node 1 --cpus-per-task 48 --gpus-per-node 8 "
        "--kill-on-bad-exit=1 /env/bin/python -m contriever_repro.training.launch --nnodes 4 "
        "--nproc-per-node 8 --"
    )
    # No shell variable: the plugin strips SLURM_* before the rule runs, so the node list
    # and job id are read by the launcher inside the step.
    assert "$" not in cmd and "--overlap" not in cmd
    assert "--gpus-per-node" not in launch_prefix("python", 2, 4, 4, device="cpu")
    with pytest.raises(ValueError):
        launch_prefix("python", 0, 8)


def test_slurm_resources_request_gpus_once():
    # One node: the plugin's ordinary job, GPUs as `gpu` (sbatch --gpus), no signal (the
    # plugin's step also holds the job's Snakemake, which SIGUSR1 would kill).
    assert slurm_resources(1, 8, "cuda", 5) == {"nodes": 1, "cpus_per_task": 48, "gpu": 8}
    assert slurm_resources(1, 1, "cpu", 0) == {"nodes": 1, "cpus_per_task": 1}
    # Several: the plugin's MPI route, one task per node, its GPUs per node, SIGUSR1 ten
    # minutes before the time limit.
    assert slurm_resources(4, 8, "cuda", 5) == {
        "nodes": 4,
        "mpi": "srun",
        "tasks": 4,
        "cpus_per_task": 48,
        "slurm_extra": "--ntasks-per-node=1 --gpus-per-node=8 --signal=USR1@600",
    }
    assert "gpus-per-node" not in slurm_resources(2, 2, "cpu", 0)["slurm_extra"]


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("gpu017", "gpu017"),
        ("gpu[007-010,012]", "gpu007"),
        ("gpu[012,007-010],cpu1", "gpu012"),
        ("rack[2-3]-n[01-04]", "rack2-n01"),
        ("a-b.c,d", "a-b.c"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_rendezvous_comes_from_the_step_environment():
    env = {"SLURM_STEP_NODELIST": "n[3-4]", "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "2"}
    assert rendezvous(env) == ("n3", 29956, "123456.2")
    assert rendezvous({**env, "SLURM_STEP_NODELIST": ""} | {"SLURM_JOB_NODELIST": "m1"})[0] == "m1"
    with pytest.raises(InputError, match="inside a SLURM step started by srun"):
        rendezvous({"SLURM_JOB_ID": "1"})


def test_node_exit_status_keeps_the_checkpoint_stop():
    assert exit_code({0: 75, 1: -15}) == 75  # torchrun ended rank 1 after rank 0 stopped
    assert exit_code({0: 1, 1: -15}) == 1
    assert exit_code({0: -9}) == 1


@pytest.mark.parametrize("trainer_stopped", [True, False])
def test_a_lost_rendezvous_after_a_checkpoint_stop_is_still_75(monkeypatch, trainer_stopped):
    """The node hosting torchrun's rendezvous may finish first; the other node's torchrun
    then raises on the lost store. Its exit is 75 only if its trainers marked a stop."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError

    from contriever_repro.cli import mark_stopped
    from contriever_repro.training.launch import STOPPED_FILE_ENV, node_main

    def fake_run(args):
        assert os.environ[STOPPED_FILE_ENV]  # what the trainers inherit
        if trainer_stopped:
            mark_stopped()
        raise RendezvousConnectionError("The connection to the C10d store has failed.")

    monkeypatch.setattr(torchrun, "run", fake_run)
    monkeypatch.delenv(STOPPED_FILE_ENV, raising=False)
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    before = dict(os.environ)
    argv = ["--nnodes", "2", "--nproc-per-node", "1", "--", "train.py"]
    if trainer_stopped:
        with pytest.raises(SystemExit) as stop:
            node_main(argv)
        assert stop.value.code == 75
    else:
        with pytest.raises(RendezvousConnectionError):
            node_main(argv)
    assert dict(os.environ) == before  # later processes never see the launcher's file


def test_a_trainer_whose_launcher_folder_is_gone_still_exits(monkeypatch, tmp_path):
    from contriever_repro.cli import mark_stopped
    from contriever_repro.training.launch import STOPPED_FILE_ENV

    monkeypatch.setenv(STOPPED_FILE_ENV, str(tmp_path / "gone" / "stopped"))
    mark_stopped()  # logged, not raised
    monkeypatch.setenv(STOPPED_FILE_ENV, str(tmp_path / "stopped"))
    mark_stopped()
    assert (tmp_path / "stopped").exists()


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


def test_job_resources_layer_shape_placement_overrides_and_defaults():
    from contriever_repro.errors import InputError
    from contriever_repro.training.launch import job_resources, slurm_resources

    shape = slurm_resources(4, 8, "cuda", 5)
    out = job_resources(
        "big",
        shape,
        {"slurm_partition": "gpu", "slurm_account": "acct"},
        {"constraint": "a100", "qos": "long", "slurm_extra": "--exclusive", "mem_mb": 400000},
        {"mem_mb": 16000, "runtime": 4320},
    )
    assert out["nodes"] == 4 and out["tasks"] == 4 and out["mpi"] == "srun"
    assert out["constraint"] == "a100" and out["qos"] == "long"  # passed through, not dropped
    assert out["slurm_extra"].endswith("--signal=USR1@600 --exclusive")
    assert out["mem_mb"] == 400000 and out["runtime"] == 4320
    assert out["slurm_partition"] == "gpu" and out["slurm_account"] == "acct"
    with pytest.raises(InputError, match=r"resources\.pretrain\.gpu: .*pretraining\.big\.nodes"):
        job_resources("big", shape, {}, {"gpu": 2}, {})
