"""The paper DAG dry-runs as users run it: `snakemake -n --profile slurm results/table2.csv`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from workflow_utils import ROOT, snakemake

pytestmark = pytest.mark.workflow


def _jobs(stdout: str) -> dict[str, list[dict]]:
    """rule name -> list of {wildcards, resources} parsed from a dry-run listing."""
    jobs: dict[str, list[dict]] = {}
    for block in re.split(r"\n(?=\[.*\]\n(?:local)?rule )", stdout):
        m = re.search(r"(?m)^(?:local)?rule (\w+):", block)
        if not m:
            continue
        res = re.search(r"(?m)^\s+resources: (.*)$", block)
        wc = re.search(r"(?m)^\s+wildcards: (.*)$", block)
        parse = lambda s: dict(kv.split("=", 1) for kv in s.split(", ")) if s else {}  # noqa: E731
        jobs.setdefault(m.group(1), []).append(
            {
                "resources": parse(res.group(1) if res else ""),
                "wildcards": parse(wc.group(1) if wc else ""),
            }
        )
    return jobs


@pytest.fixture(scope="module")
def fake_slurm(tmp_path_factory) -> dict:
    """A PATH whose sbatch/squeue/sacct only record that they were called."""
    bin_dir = tmp_path_factory.mktemp("fakebin")
    calls = bin_dir / "calls.log"
    for tool in ("sbatch", "squeue", "sacct", "sinfo", "scontrol", "sacctmgr"):
        script = bin_dir / tool
        script.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\necho "Submitted batch job 1"\n'
        )
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "calls": calls}


@pytest.fixture(scope="module")
def slurm_dry_run(fake_slurm):
    proc = snakemake(
        "-n",
        "--profile",
        "slurm",
        "results/table2.csv",
        "--nolock",
        cwd=ROOT,
        env={"PATH": fake_slurm["PATH"]},
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return proc.stdout + proc.stderr, fake_slurm["calls"]


def test_profile_is_found_as_a_bare_name():
    assert (ROOT / "slurm" / "config.yaml").is_file()
    text = (ROOT / "slurm" / "config.yaml").read_text()
    assert "executor: slurm" in text and re.search(r"(?m)^jobs: \d+", text)
    assert not (ROOT / "profiles" / "default").exists()  # an empty one breaks every run


def test_table2_dag_has_every_beir_dataset(slurm_dry_run):
    out, _ = slurm_dry_run
    jobs = _jobs(out)
    downloads = {j["wildcards"]["dataset"] for j in jobs["download_beir"]}
    assert downloads == {
        "msmarco", "trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana",
        "webis-touche2020", "cqadupstack", "quora", "dbpedia-entity", "scidocs", "fever",
        "climate-fever", "scifact",
    }  # fmt: skip
    units = {j["wildcards"]["unit"] for j in jobs["convert_beir"]}
    assert len([u for u in units if u.startswith("cqadupstack--")]) == 12
    assert len(units) == 14 + 12
    models = {j["wildcards"]["model"] for j in jobs["encode_queries"]}
    assert models == {"contriever-msmarco"}
    assert {j["wildcards"]["model"] for j in jobs["bm25"]} == {"bm25"}
    msmarco_shards = [j for j in jobs["encode_corpus"] if j["wildcards"]["unit"] == "msmarco"]
    assert len(msmarco_shards) == 8
    assert len(jobs["table"]) == 1


def test_gpu_rules_request_gpus_with_the_gpu_resource(slurm_dry_run):
    out, _ = slurm_dry_run
    jobs = _jobs(out)
    for rule in ("encode_corpus", "encode_queries", "search"):
        for job in jobs[rule]:
            res = job["resources"]
            assert res.get("gpu") == "1", (rule, res)
            assert "gpus" not in res
            assert int(res["mem_mb"]) >= 32000 and int(res["runtime"]) >= 60
            assert int(res["cpus_per_task"]) >= 4
    for rule in ("download_beir", "convert_beir", "bm25", "evaluate", "table"):
        for job in jobs[rule]:
            assert job["resources"].get("gpu", "0") == "0", (rule, job["resources"])


def test_account_and_partition_come_from_the_profile(slurm_dry_run):
    out, calls = slurm_dry_run
    assert "slurm_account=" in out and "slurm_partition=" in out
    # A dry run submits nothing.
    assert not calls.exists() or "sbatch" not in calls.read_text()


def test_plain_dry_run_table11_uses_the_unsupervised_checkpoint():
    proc = snakemake("-n", "-p", "results/table11.csv", "--nolock", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert {j["wildcards"]["model"] for j in jobs["encode_queries"]} == {"contriever"}
    assert "facebook/contriever" in proc.stdout


def test_whole_paper_dag_dry_runs():
    proc = snakemake("-n", "--nolock", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "figure1.png" in proc.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ("evaluation={'top_k': 'many', 'k_values': [10], 'ignore_identical_ids': True}", "top_k"),
        ("wrong_key=1", "wrong_key"),
    ],
)
def test_schema_rejects_bad_config_naming_the_key(override, message):
    proc = snakemake("-n", "--nolock", "--config", override, cwd=ROOT)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_unknown_model_in_a_table_is_named(tmp_path: Path):
    proc = snakemake(
        "-n",
        "--nolock",
        "--config",
        "tables={'table2': {'datasets': ['scifact'], 'columns': [{'name': 'X', 'model': 'nope'}]}}",
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "models.nope" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("target", "experiments"),
    [
        ("results/table6.csv", {"ablation-moco", "ablation-inbatch"}),
        (
            "results/table7.csv",
            {"ablation-ict", "ablation-crop", "ablation-crop-delete", "ablation-crop-replace"},
        ),
        (
            "results/table8.csv",
            {"ablation-crop", "ablation-ccnet", "ablation-uniform", "ablation-5050"},
        ),
        ("results/table11b.csv", {"contriever"}),
        (
            "results/figure2.png",
            {"ablation-crop-delete"} | {f"ablation-queue-{2**k}" for k in range(11, 17)},
        ),
    ],
)
def test_pretraining_targets_show_the_whole_dag(fake_slurm, target, experiments):
    proc = snakemake(
        "-n", "--profile", "slurm", target, "--nolock", cwd=ROOT, env={"PATH": fake_slurm["PATH"]}
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    jobs = _jobs(out)
    assert {j["wildcards"]["name"] for j in jobs["pretrain"]} == experiments
    # corpus download -> text -> 128 pieces -> one tokenisation job per piece
    assert {"download_corpus", "prepare_corpus", "split_corpus"} <= set(jobs)
    corpora = {j["wildcards"]["corpus"] for j in jobs["split_corpus"]}
    assert len(jobs["tokenize_piece"]) == 128 * len(corpora)
    for job in jobs["pretrain"]:
        res = job["resources"]
        assert res["nodes"] == "4" and res["gres"] == "gpu:8" and res["runtime"] == "4320"
    assert "srun --overlap --nodes 4 --ntasks-per-node 1" in out
    assert "-m torch.distributed.run --nnodes 4 --nproc-per-node 8" in out


def test_model_card_target_gathers_the_metrics_of_the_trained_model():
    proc = snakemake("-n", "-p", "results/model_cards/contriever.md", "--nolock", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert [j["wildcards"]["name"] for j in jobs["pretrain"]] == ["contriever"]
    assert {j["wildcards"]["model"] for j in jobs["dataset_metrics"]} == {"contriever-trained"}
    assert len(jobs["model_card"]) == 1
    assert "model_cards/contriever.md" in proc.stdout and "--metrics " in proc.stdout
