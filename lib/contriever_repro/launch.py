"""How one Snakemake job starts the training processes (the reference only had its own
SLURM launcher and `torch.distributed.launch`, spec §8.1 and §15 row 15).

* 1 process: plain `python`, on GPU or CPU.
* 1 node, G processes: `torchrun --standalone`, which sets RANK/WORLD_SIZE/LOCAL_RANK.
* N nodes: inside the SLURM allocation, `srun` starts one torchrun per node; they meet
  at the first node of the allocation through torchrun's c10d rendezvous. `--overlap`
  lets this step share the allocation with the step Snakemake's job runs in.
The interpreter is passed explicitly (`python -m torch.distributed.run`), so the
workflow's environment is used on every node.
"""

from __future__ import annotations

import shlex

RDZV_PORT = 29500


def launch_prefix(python: str, nodes: int, procs_per_node: int, port: int = RDZV_PORT) -> str:
    """Shell prefix that runs a script with `nodes` x `procs_per_node` processes."""
    if nodes < 1 or procs_per_node < 1:
        raise ValueError(f"need nodes >= 1 and procs_per_node >= 1, got {nodes}, {procs_per_node}")
    py = shlex.quote(python)
    if nodes == 1 and procs_per_node == 1:
        return py
    run = f"{py} -m torch.distributed.run"
    if nodes == 1:
        return f"{run} --standalone --nnodes 1 --nproc-per-node {procs_per_node}"
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (
        f"srun --overlap --nodes {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
        f"{run} --nnodes {nodes} --nproc-per-node {procs_per_node} "
        f'--rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "{head}:{port}"'
    )


def slurm_resources(nodes: int, gpus_per_node: int, device: str, workers: int) -> dict:
    """Resources the SLURM executor turns into sbatch options for a training job.

    GPUs are requested per node with `gres` (`--gres=gpu:G` is per node in SLURM), and
    each node gets a CPU per data-loading worker plus one per training process.
    """
    out = {"nodes": nodes, "cpus_per_task": (workers + 1) * gpus_per_node}
    if device == "cuda":
        out["gres"] = f"gpu:{gpus_per_node}"
        # `gpu` becomes --gpus, a total over the job: only right on one node.
        out["gpu"] = gpus_per_node if nodes == 1 else 0
    return out
