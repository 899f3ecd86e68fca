"""How one Snakemake job starts the training processes, and what it asks SLURM for (the
reference only had its own SLURM launcher and `torch.distributed.launch`, spec §8.1 and
§15 row 15).

* 1 process: plain `python`, on GPU or CPU.
* 1 node, G processes: `torchrun --standalone`, which sets RANK/WORLD_SIZE/LOCAL_RANK.
  SLURM: the plugin's ordinary job (`gpu=G` -> `--gpus=G`), run in its one-task step.
* N nodes: the SLURM plugin's MPI route (`mpi="srun"`, `tasks=N`, one task per node): the
  plugin runs the job's command in the batch step and the command's `srun` starts one
  launcher per node (`python -m contriever_repro.training.launch`), which reads where it runs from
  the variables srun sets in the step (the plugin strips the job's SLURM_* variables
  before the rule runs) and starts torchrun there; the nodes meet at the step's first
  host through torchrun's c10d rendezvous.
  SLURM sends SIGUSR1 `STOP_LEAD_S` seconds before the time limit to every process of
  the step (`--signal`, not to the batch step): the trainers checkpoint and exit 75, the
  launcher and torchrun ignore it. One-node jobs get no `--signal`: the plugin runs the
  job's own Snakemake inside the signalled step, and SIGUSR1 would kill it; they stop on
  the in-process deadline (scripts/pretrain.py --time-limit-min) instead.
The interpreter is passed explicitly, so the workflow's environment is used on every node.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..errors import InputError

RDZV_PORT = 29500  # + SLURM job id mod 1000: two jobs sharing a node do not collide
STOP_LEAD_S = 600  # = scripts/pretrain.py's default --stop-margin-min (10)
PREEMPTED_EXIT_CODE = 75  # loop.PREEMPTED_EXIT_CODE, without importing torch here
# A trainer that stopped with a checkpoint touches the file this variable names (cli.py):
# the node whose torchrun hosts the rendezvous may exit first, and the other node's
# torchrun then fails on the lost store instead of reporting its workers' 75.
STOPPED_FILE_ENV = "CONTRIEVER_STOPPED_FILE"


def launch_prefix(
    python: str,
    nodes: int,
    procs_per_node: int,
    cpus_per_node: int = 1,
    device: str = "cuda",
    mpi: str = "srun",
) -> str:
    """Shell prefix that runs a script with `nodes` x `procs_per_node` processes."""
    if nodes < 1 or procs_per_node < 1:
        raise ValueError(f"need nodes >= 1 and procs_per_node >= 1, got {nodes}, {procs_per_node}")
    py = shlex.quote(python)
    if nodes == 1 and procs_per_node == 1:
        return py
    if nodes == 1:
        return (
            f"{py} -m torch.distributed.run --standalone --nnodes 1 "
            f"--nproc-per-node {procs_per_node}"
        )
    # The step's shape is spelled out: the plugin removed the job's SLURM_NTASKS,
    # SLURM_CPUS_PER_TASK, ... from the environment, and srun would otherwise start one
    # task with one CPU.
    gpus = f" --gpus-per-node {procs_per_node}" if device == "cuda" else ""
    return (
        f"{mpi} --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 "
        f"--cpus-per-task {cpus_per_node}{gpus} --kill-on-bad-exit=1 "
        f"{py} -m contriever_repro.training.launch "
        f"--nnodes {nodes} --nproc-per-node {procs_per_node} --"
    )


def slurm_resources(nodes: int, gpus_per_node: int, device: str, workers: int) -> dict:
    """Resources the SLURM executor turns into sbatch options for a training job.

    Each node gets a CPU per data-loading worker plus one per training process, and its
    GPUs are requested once: `gpu=G` (`--gpus=G`) on one node; on several, the MPI route
    with `--gpus-per-node` (a job-wide `--gpus` would not say how they are spread).
    """
    cpus = (workers + 1) * gpus_per_node
    cuda = device == "cuda"
    if nodes == 1:
        out = {"nodes": 1, "cpus_per_task": cpus}
        if cuda:
            out["gpu"] = gpus_per_node
        return out
    extra = ["--ntasks-per-node=1"]
    if cuda:
        extra.append(f"--gpus-per-node={gpus_per_node}")
    extra.append(f"--signal=USR1@{STOP_LEAD_S}")
    return {
        "nodes": nodes,
        "mpi": "srun",
        "tasks": nodes,
        "cpus_per_task": cpus,
        "slurm_extra": " ".join(extra),
    }


# The experiment's shape (nodes, gpus_per_node, device) decides these.
JOB_SHAPE = ("nodes", "gpu", "gpus", "gres", "tasks", "tasks_per_node", "mpi")


def job_resources(name: str, shape: dict, placement: dict, overrides: dict, defaults: dict) -> dict:
    """Every resource of one pre-training job: the shape (slurm_resources), then the
    account/partition (`placement`), then what `resources.pretrain` sets (`overrides`:
    memory, time, CPUs, constraint, qos, partition ... anything but the shape; its
    slurm_extra is appended to the shape's), then memory and time from `defaults`."""
    for key in JOB_SHAPE:
        if key in overrides:
            raise InputError(
                f"resources.pretrain.{key}: the nodes and GPUs of a pre-training job "
                f"come from pretraining.{name}.nodes / gpus_per_node / device"
            )
    out = {**shape, **placement}
    extra = dict(overrides)
    if extra.get("slurm_extra") and out.get("slurm_extra"):
        extra["slurm_extra"] = f"{out['slurm_extra']} {extra['slurm_extra']}"
    out.update(extra)
    for key in ("mem_mb", "runtime"):
        if key not in out and defaults.get(key) is not None:
            out[key] = defaults[key]
    return out


# --------------------------------------------------------------------------- per node


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: `gpu[007-010,012],cpu1` -> `gpu007`."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    head = nodelist[:end].strip()

    def first(match: re.Match) -> str:
        return match.group(1).split(",")[0].split("-")[0]

    host = re.sub(r"\[([^\]]*)\]", first, head)
    if not host or "[" in host or "]" in host:
        raise InputError(f"cannot read the first host of the SLURM node list {nodelist!r}")
    return host


def rendezvous(env: Mapping[str, str], port: int | None = None) -> tuple[str, int, str]:
    """(host, port, id) where this SLURM step's torchruns meet, from the variables srun
    sets inside the step."""
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    job = env.get("SLURM_JOB_ID")
    if not nodelist or not job:
        raise InputError(
            "the multi-node launcher must run inside a SLURM step started by srun "
            "(SLURM_STEP_NODELIST and SLURM_JOB_ID are not set)"
        )
    if port is None:
        port = RDZV_PORT + (int(job) % 1000 if job.isdigit() else 0)
    return first_host(nodelist), port, f"{job}.{env.get('SLURM_STEP_ID', '0')}"


def torchrun_args(nnodes: int, nproc: int, command: list[str], env: Mapping[str, str]) -> list:
    host, port, rdzv_id = rendezvous(env)
    return [
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{host}:{port}",
        "--rdzv-id",
        rdzv_id,
        *command,
    ]


def exit_code(failures: Mapping[int, int]) -> int:
    """The node's exit status from its workers' (rank -> status): 75 if they stopped
    with a checkpoint (the other ranks may have been ended by torchrun after that)."""
    codes = list(failures.values())
    if PREEMPTED_EXIT_CODE in codes:
        return PREEMPTED_EXIT_CODE
    return next((c for c in codes if c > 0), 1)


def node_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m contriever_repro.training.launch",
        description="Start this node's training processes inside a SLURM step (srun).",
    )
    ap.add_argument("--nnodes", type=int, required=True)
    ap.add_argument("--nproc-per-node", type=int, required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- script and its arguments")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the training script after --")
    try:
        targs = torchrun_args(args.nnodes, args.nproc_per_node, command, os.environ)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # SLURM's SIGUSR1 reaches every process of the step. torchrun must outlive the
    # trainers' checkpoint: it ignores the signal, and the trainers inherit the ignored
    # disposition until they install their own handler (loop.StopFlag).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    previous = os.environ.get(STOPPED_FILE_ENV)
    with tempfile.TemporaryDirectory(prefix="contriever-launch-") as tmp:
        stopped = Path(tmp) / "stopped"
        os.environ[STOPPED_FILE_ENV] = str(stopped)  # the trainers inherit it
        try:
            run(parse_args(targs))
        except ChildFailedError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(exit_code({r: f.exitcode for r, f in err.failures.items()}))
        except Exception as err:
            # torchrun has already waited for this node's workers (its agent shuts
            # them down before raising).
            if not stopped.exists():
                raise
            print(
                f"note: the trainers stopped with a checkpoint; torchrun then lost the "
                f"rendezvous ({type(err).__name__}), as the node hosting it had finished",
                file=sys.stderr,
            )
            sys.exit(PREEMPTED_EXIT_CODE)
        finally:
            if previous is None:
                os.environ.pop(STOPPED_FILE_ENV, None)
            else:
                os.environ[STOPPED_FILE_ENV] = previous


if __name__ == "__main__":
    node_main()
