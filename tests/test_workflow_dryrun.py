"""The paper DAG dry-runs as users run it: `snakemake -n --profile slurm results/table2.csv`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from contriever_repro.io import write_table
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


def test_a_dry_run_submits_nothing(slurm_dry_run):
    _, calls = slurm_dry_run
    assert not calls.exists() or "sbatch" not in calls.read_text()


def test_hub_models_are_prefetched_once_and_encoded_from_the_local_copy(slurm_dry_run):
    out, _ = slurm_dry_run
    jobs = _jobs(out)
    assert sorted(j["wildcards"]["repo"] for j in jobs["prefetch_model"]) == [
        "cross-encoder--ms-marco-MiniLM-L-6-v2",  # Ours+CE's re-ranker
        "facebook--contriever-msmarco",
    ]
    assert (
        "--repo-id facebook/contriever-msmarco --revision= --users models.contriever-msmarco" in out
    )
    encodes = re.findall(r"(?m)^Shell command: .*scripts/encode\.py .*$", out)
    assert len(encodes) == 48 + 26
    for cmd in encodes:
        assert "--source work/paper/models/hub/facebook--contriever-msmarco" in cmd, cmd
        assert "--device auto --gpus 1" in cmd, cmd  # a GPU job: no silent CPU fallback
    # the encode jobs wait for the prefetch
    blocks = re.split(r"\n(?=\[.*\]\n(?:local)?rule )", out)
    for block in blocks:
        if re.search(r"(?m)^rule encode_(corpus|queries):", block):
            assert re.search(
                r"(?m)^\s+input: .*work/paper/models/hub/facebook--contriever-msmarco", block
            )


def test_ours_ce_reranks_the_top_100_of_every_unit_on_gpu(slurm_dry_run):
    """Table 2's Ours+CE: one GPU job per unit (query_shards 1) re-ranking the released
    checkpoint's run with the prefetched cross-encoder, merged on the submit host."""
    out, _ = slurm_dry_run
    jobs = _jobs(out)
    units = {j["wildcards"]["unit"] for j in jobs["rerank"]}
    assert len(units) == len(jobs["rerank"]) == len(jobs["merge_rerank"]) == 26
    assert all(j["resources"]["gpu"] == "1" for j in jobs["rerank"])
    reranks = re.findall(r"(?m)^Shell command: .*scripts/rerank\.py score .*$", out)
    assert len(reranks) == 26
    for cmd in reranks:
        assert "--run work/paper/runs/dense/contriever-msmarco/" in cmd, cmd
        assert "--cross-encoder work/paper/models/hub/cross-encoder--ms-marco-MiniLM-L-6-v2" in cmd
        assert "--depth 100 --shard 0 --num-shards 1" in cmd and "--dtype fp16" in cmd, cmd
    evaluated = {j["wildcards"]["model"] for j in jobs["evaluate"]}
    assert evaluated == {"bm25", "contriever-msmarco", "contriever-msmarco-ce"}


def test_mrtydi_tables_dry_run_from_archives_to_tables(fake_slurm):
    """Tables 4 and 15: 11 release archives, unpacked and converted once; the released and
    the trained checkpoints evaluated on each language; Mr. TyDi fine-tuning on all 11
    train sets with negatives mined per language by the MS MARCO model."""
    proc = snakemake(
        "-n", "--profile", "slurm", "results/table4.csv", "results/table15.csv",
        "results/table12.csv", "--nolock", cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    jobs = _jobs(out)
    languages = ["ar", "bn", "en", "fi", "id", "ja", "ko", "ru", "sw", "te", "th"]
    sets = {f"mrtydi-{c}" for c in languages}
    assert len(jobs["download_mrtydi"]) == len(jobs["unpack_mrtydi"]) == 11
    assert "mrtydi-v1.1-swahili.tar.gz" in out
    assert {j["wildcards"]["dataset"] for j in jobs["unpack_mrtydi"]} == sets
    assert {(j["wildcards"]["dataset"], j["wildcards"]["split"]) for j in jobs["training_set"]} >= {
        (s, "train") for s in sets
    }
    mined = {(j["wildcards"]["name"], j["wildcards"]["dataset"]) for j in jobs["mine_negatives"]}
    assert mined == {(n, s) for n in ("mcontriever-mrtydi-ft", "mcontriever-11-mrtydi-ft")
                     for s in sets}  # fmt: skip
    assert {j["wildcards"]["name"] for j in jobs["finetune"]} == {
        "mcontriever-msmarco-ft", "mbert-msmarco-ft", "mcontriever-mrtydi-ft",
        "mcontriever-11-msmarco-ft", "mcontriever-11-mrtydi-ft",
    }  # fmt: skip
    assert {j["wildcards"]["name"] for j in jobs["pretrain"]} == {"mcontriever", "mcontriever-11"}
    english = [j for j in jobs["encode_corpus"] if j["wildcards"]["unit"] == "mrtydi-en"]
    assert {j["wildcards"]["model"] for j in english} == {
        "mcontriever", "mcontriever-tydi-released", "mcontriever-msmarco-tydi-released",
        "mcontriever-msmarco-ft", "mcontriever-mrtydi-ft", "mbert-msmarco-ft", "mcontriever-11",
        "mcontriever-11-msmarco-ft", "mcontriever-11-mrtydi-ft",
    }  # fmt: skip
    assert len(english) == 9 * 64 and all(j["resources"]["gpu"] == "1" for j in english)
    # one fine-tuning job gets every language's files, in the config's order
    cmd = next(c for c in re.findall(r"(?m)^Shell command: .*scripts/finetune\.py .*$", out)
               if "--name mcontriever-mrtydi-ft" in c)  # fmt: skip
    assert [m for m in re.findall(r"--dataset (\S+)", cmd)] == sorted(sets)
    assert cmd.count("--mined work/paper/finetune/mined/mcontriever-mrtydi-ft/") == 11
    assert len(jobs["table"]) == 3


def test_partitions_and_account_come_from_the_config_per_rule(fake_slurm):
    proc = snakemake(
        "-n", "--profile", "slurm", "results/table2.csv", "--nolock",
        "--config", "slurm_account=acct", "slurm_gpu_partition=gpuq", "slurm_cpu_partition=cpuq",
        cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    jobs = _jobs(proc.stdout + proc.stderr)
    for rule, partition in [
        ("encode_corpus", "gpuq"), ("encode_queries", "gpuq"), ("search", "gpuq"),
        ("bm25", "cpuq"), ("convert_beir", "cpuq"),
    ]:  # fmt: skip
        for job in jobs[rule]:
            res = job["resources"]
            assert res["slurm_partition"] == partition and res["slurm_account"] == "acct", res
            assert int(res["runtime"]) >= 60 and int(res["mem_mb"]) >= 8000, res


def test_plain_dry_run_table11_uses_the_unsupervised_checkpoint():
    proc = snakemake("-n", "-p", "results/table11.csv", "--nolock", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert {j["wildcards"]["model"] for j in jobs["encode_queries"]} == {"contriever"}
    assert "facebook/contriever" in proc.stdout
    # execution settings from the config: attention kernels and the exact-search engine
    assert "--sdpa-backends flash,efficient,math" in proc.stdout
    assert "--backend faiss" in proc.stdout


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
        assert res["nodes"] == "4" and res["runtime"] == "4320"
        # The plugin's MPI route: one task per node; GPUs per node, once; SIGUSR1 ten
        # minutes before the time limit.
        assert res["mpi"] == "srun" and res["tasks"] == "4"
        assert res["slurm_extra"] == "--ntasks-per-node=1 --gpus-per-node=8 --signal=USR1@600"
        assert "gpu" not in res and "gres" not in res
        assert _sbatch(res).endswith(
            "--nodes=4 --ntasks=4 --cpus-per-task=48 --ntasks-per-node=1 --gpus-per-node=8 "
            "--signal=USR1@600 -D ."
        )
    # The rule's own srun starts one launcher per node; nothing reads the job's SLURM_*
    # variables in the shell (the plugin strips them before the rule runs).
    assert (
        "srun --nodes 4 --ntasks 4 --ntasks-per-node 1 --cpus-per-task 48 --gpus-per-node 8 "
        "--kill-on-bad-exit=1 " in out
    )
    assert "-m contriever_repro.training.launch --nnodes 4 --nproc-per-node 8 -- " in out
    assert "$SLURM" not in out and "--overlap" not in out
    assert re.search(
        r"--attempt 1 --sdpa-backends flash,efficient,math --time-limit-min 4320 2> \S+\.log",
        out,
    )


class _Resources(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _job(resources: dict) -> SimpleNamespace:
    """A job as the SLURM plugin sees it, from a dry-run's resource listing."""
    res = {k: int(v) if v.isdigit() else v for k, v in resources.items() if v != "<TBD>"}
    return SimpleNamespace(resources=_Resources(res), threads=1)


def _sbatch(resources: dict) -> str:
    """The sbatch command the installed SLURM plugin would submit for these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    job = _job(resources)
    validate_slurm_extra(job)  # the plugin refuses --gres/--gpus/--nodes... there
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "",
              "partition": "", "workdir": "."}  # fmt: skip
    return get_submit_command(job, params)


def _paper_config(tmp_path: Path, name: str, **changes) -> Path:
    """The paper config with pretraining.<name> changed (nested --config values arrive
    as strings)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["pretraining"][name].update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_one_node_pretraining_requests_its_gpus_once(tmp_path, fake_slurm):
    from snakemake_executor_plugin_slurm_jobstep import get_gpu_setting

    one_node = _paper_config(tmp_path, "ablation-moco", nodes=1, gpus_per_node=8)
    proc = snakemake(
        "-n", "-p", "--profile", "slurm", "work/paper/models/ablation-moco", "--nolock",
        "--configfile", str(one_node), cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    (job,) = _jobs(out)["pretrain"]
    res = job["resources"]
    assert res["gpu"] == "8" and res["nodes"] == "1" and res["cpus_per_task"] == "48"
    assert not {"gres", "gpus", "mpi", "tasks", "slurm_extra"} & set(res)
    sbatch = _sbatch(res)
    assert " --gpus" not in sbatch and "--gres" not in sbatch and "--signal" not in sbatch
    # ... and the plugin's one-task step gets them as --gpus=8 (from `gpu`), once.
    assert get_gpu_setting(_job(res)) == "--gpus=8"
    assert "-m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 8 " in out
    assert "srun" not in out.split("rule pretrain:")[1].split("Shell command:")[1].split("\n")[0]


def test_a_changed_experiment_is_refused_before_any_job_runs(tmp_path, fake_slurm):
    """A run folder whose checkpoints were made with other values: `snakemake -n` fails
    at once, naming the experiment and what changed (no submission, no deletion)."""
    from contriever_repro.plan import pretrain_config

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    training = pretrain_config(cfg, "ablation-moco").training_dict()
    record = {"init": "bert-base-uncased", **json.loads(json.dumps(training))}
    run = tmp_path / "work" / "pretrain" / "ablation-moco"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step-00001000\n")
    (run / "experiment.json").write_text(json.dumps({**record, "lr": 1e-4}))
    (tmp_path / "work" / "models" / "ablation-moco").mkdir(parents=True)
    changed = _paper_config(tmp_path, "ablation-moco", temperature=0.1)
    proc = snakemake(
        "-n", "--profile", "slurm", str(tmp_path / "work/models/ablation-moco"), "--nolock",
        "--configfile", str(changed), "--config", f"work_dir={tmp_path / 'work'}",
        cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "pretraining.ablation-moco: the configuration differs" in out
    assert f"checkpoints in {run} were made with" in out
    assert "lr: 0.0001 -> 5e-05; temperature: 0.05 -> 0.1" in out
    assert (tmp_path / "work" / "models" / "ablation-moco").is_dir()
    assert not fake_slurm["calls"].exists() or "sbatch" not in fake_slurm["calls"].read_text()


# --------------------------------------------------------- what reaches sbatch


@pytest.fixture
def failing_sbatch(tmp_path):
    """sbatch that records its command line and refuses the job (so the run ends at
    once); sacctmgr knows the account `acct`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch.log"
    tools = {
        "sbatch": f'echo "sbatch $*" >> "{calls}"\necho "refused by the test" >&2\nexit 1',
        "sacctmgr": "echo acct",
        "sacct": "true",
        "squeue": "true",
        "sinfo": "true",
        "scontrol": "true",
    }
    for tool, body in tools.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "calls": calls}


def _touch_chain(work: Path, dataset: str, tables: dict | None = None) -> None:
    """Everything upstream of data/<dataset>/*.parquet, oldest first."""
    (work / "downloads" / "beir").mkdir(parents=True, exist_ok=True)
    (work / "downloads" / "beir" / f"{dataset}.zip").write_bytes(b"")
    (work / "raw" / "beir" / dataset).mkdir(parents=True, exist_ok=True)
    for kind, df in (tables or {}).items():
        write_table(df, work / "data" / dataset / f"{kind}.parquet", kind)


def test_what_reaches_sbatch_and_what_runs_on_the_submit_host(tmp_path, failing_sbatch):
    work = tmp_path / "work"
    queries = pd.DataFrame({"query_id": ["q1"], "text": ["x"]})
    corpus = pd.DataFrame({"doc_id": ["d1"], "title": [""], "text": ["x"]})
    qrels = pd.DataFrame({"query_id": ["q1"], "doc_id": ["d1"], "relevance": [1]})
    run = pd.DataFrame({"query_id": ["q1"], "doc_id": ["d1"], "rank": [1], "score": [1.0]})
    # scifact: scored on the submit host (evaluate, dataset_metrics are localrules)
    _touch_chain(work, "scifact", {"qrels": qrels, "queries": queries, "corpus": corpus})
    write_table(run, work / "runs" / "bm25" / "bm25" / "scifact.parquet", "run")
    # contriever-msmarco already prefetched: its query encoding is a GPU job
    (work / "models" / "hub" / "facebook--contriever-msmarco").mkdir(parents=True)
    # nfcorpus: BM25, a CPU job
    _touch_chain(work, "nfcorpus", {"queries": queries, "corpus": corpus})
    # fiqa: unpacked, not converted; its conversion is sized from corpus.jsonl (3 MiB)
    _touch_chain(work, "fiqa")
    (work / "raw" / "beir" / "fiqa" / "corpus.jsonl").write_bytes(b"x" * 3 * 2**20)
    # facebook/contriever: not prefetched; the hub is unreachable, the fetch must be local
    targets = [
        f"{work}/metrics/bm25/datasets/scifact.parquet",
        f"{work}/embeddings/contriever-msmarco/scifact/queries.npy",
        f"{work}/runs/bm25/bm25/nfcorpus.parquet",
        f"{work}/data/fiqa/corpus.parquet",
        f"{work}/models/hub/facebook--contriever",
    ]
    proc = snakemake(
        "--profile", "slurm", *targets, "--retries", "0",
        "--slurm-init-seconds-before-status-checks", "1",  # else shutdown waits 40 s
        "--set-resources", "encode_queries:runtime=99",
        "--config", f"work_dir={work}", f"results_dir={tmp_path / 'results'}",
        "slurm_account=acct", "slurm_gpu_partition=gpuq", "slurm_cpu_partition=cpuq",
        cwd=ROOT, env={"PATH": failing_sbatch["PATH"], "HF_HUB_OFFLINE": "1"}, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]  # the fake sbatch refuses every job
    calls = failing_sbatch["calls"].read_text().splitlines()
    by_rule = {re.search(r"--comment '?rule_(\w+?)_wildcards", c).group(1): c for c in calls}
    assert sorted(by_rule) == ["bm25", "convert_beir", "encode_queries"], calls
    enc = by_rule["encode_queries"]
    # --set-resources for one key keeps the rest: partition, account, memory, GPUs
    assert "-p gpuq" in enc and "-A acct" in enc and "-t 99" in enc, enc
    assert "--mem 32000" in enc and "--cpus-per-task=4" in enc and "--gpus=1" in enc, enc
    bm25 = by_rule["bm25"]
    assert "-p cpuq" in bm25 and "-A acct" in bm25 and "-t 720" in bm25, bm25
    assert "--gpus" not in bm25 and "--mem 128000" in bm25, bm25
    conv = by_rule["convert_beir"]
    assert "-p cpuq" in conv and "--mem 1015" in conv and "-t 60" in conv, conv
    # localrules ran here: scoring finished, the prefetch was tried (offline) and failed
    assert (work / "metrics" / "bm25" / "datasets" / "scifact.parquet").is_file()
    log = work / "logs" / "prefetch_model" / "facebook--contriever.log"
    assert "OfflineModeIsEnabled" in log.read_text() or "offline" in log.read_text().lower()
    assert not (work / "models" / "hub" / "facebook--contriever").exists()


def test_tokenizers_and_inits_from_the_hub_are_prefetched_too():
    proc = snakemake("-n", "-p", "results/table6.csv", "--nolock", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert [j["wildcards"] for j in jobs["prefetch_model"]] == [{"repo": "bert-base-uncased"}]
    folder = "work/paper/models/hub/bert-base-uncased"
    tokenize = re.findall(r"(?m)^Shell command: .*tokenize_corpus\.py .*$", proc.stdout)
    assert tokenize and all(f"--tokenizer {folder} " in c for c in tokenize)
    pretrain = re.findall(r"(?m)^Shell command: .*pretrain\.py .*$", proc.stdout)
    assert len(pretrain) == 2 and all(f"--init {folder} " in c for c in pretrain)


def test_model_card_target_gathers_the_metrics_of_the_trained_model():
    proc = snakemake("-n", "-p", "results/model_cards/contriever.md", "--nolock", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert [j["wildcards"]["name"] for j in jobs["pretrain"]] == ["contriever"]
    assert {j["wildcards"]["model"] for j in jobs["dataset_metrics"]} == {"contriever-trained"}
    assert len(jobs["model_card"]) == 1
    assert "model_cards/contriever.md" in proc.stdout and "--metrics " in proc.stdout


# --- fine-tuning --------------------------------------------------------------------


@pytest.fixture(scope="module")
def table2b_dry_run(fake_slurm):
    proc = snakemake(
        "-n", "--profile", "slurm", "results/table2b.csv", "--nolock",
        cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return _jobs(proc.stdout + proc.stderr)


def test_table2b_shows_pretraining_phase1_mining_phase2_and_evaluation(table2b_dry_run):
    jobs = table2b_dry_run
    assert {j["wildcards"]["name"] for j in jobs["pretrain"]} == {"contriever"}
    assert {j["wildcards"]["name"] for j in jobs["finetune"]} == {
        "contriever-msmarco-phase1",
        "contriever-msmarco-ft",
    }
    assert [j["wildcards"] for j in jobs["mine_negatives"]] == [
        {"name": "contriever-msmarco-ft", "dataset": "msmarco"}
    ]
    # the collection is encoded by the phase-1 model in the usual sharded GPU jobs
    phase1 = [
        j for j in jobs["encode_corpus"] if j["wildcards"]["model"] == "contriever-msmarco-phase1"
    ]
    assert len(phase1) == 8 and all(j["resources"]["gpu"] == "1" for j in phase1)
    assert jobs["mine_negatives"][0]["resources"]["gpu"] == "1"
    assert [j["wildcards"] for j in jobs["training_set"]] == [
        {"dataset": "msmarco", "split": "train"}
    ]
    # the fine-tuned model is evaluated on every BEIR data set
    evaluated = {
        j["wildcards"]["unit"]
        for j in jobs["evaluate"]
        if j["wildcards"]["model"] == "contriever-msmarco-ft"
    }
    assert len(evaluated) == 26  # 14 data sets + CQADupStack's 12 sub-forums
    for job in jobs["finetune"]:
        res = job["resources"]
        # 2 nodes x 8 GPUs through the plugin's MPI route, as pre-training
        assert (
            res["nodes"] == "2"
            and res["tasks"] == "2"
            and "--gpus-per-node=8" in res["slurm_extra"]
        )


def test_few_shot_and_ablation_fine_tuning_dry_run(fake_slurm):
    proc = snakemake(
        "-n", "--profile", "slurm", "results/table3.csv", "results/table9.csv", "--nolock",
        cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    jobs = _jobs(proc.stdout + proc.stderr)
    names = {j["wildcards"]["name"] for j in jobs["finetune"]}
    few_shot = {
        f"fewshot-{m}-{d}"
        for m in ("bert", "contriever", "bert-msmarco", "contriever-msmarco")
        for d in ("scifact", "nfcorpus", "fiqa")
    }
    assert few_shot | {"bert-msmarco-ablation", "ablation-crop-delete-msmarco"} <= names
    splits = {(j["wildcards"]["dataset"], j["wildcards"]["split"]) for j in jobs["training_set"]}
    assert {
        ("scifact", "train"),
        ("nfcorpus", "dev"),
        ("fiqa", "dev"),
        ("msmarco", "train"),
    } <= splits
    assert ("scifact", "dev") not in splits  # SciFact's dev is a hold-out of its train split
    # few-shot models are tested on their own data set only
    for job in jobs["evaluate"]:
        model = job["wildcards"]["model"]
        if model.startswith("fewshot-"):
            assert model.endswith(job["wildcards"]["unit"])


@pytest.fixture(scope="module")
def qa_dry_run(fake_slurm):
    """Tables 1 and 5 through the SLURM profile: one collection, encoded in 64 GPU jobs
    per model, searched by every question set."""
    proc = snakemake(
        "-n", "--profile", "slurm", "results/table1.csv", "results/table5.csv", "--nolock",
        cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return _jobs(proc.stdout + proc.stderr), proc.stdout + proc.stderr


def test_table1_and_table5_dags_encode_the_collection_once_per_model(qa_dry_run):
    jobs, out = qa_dry_run
    assert [j["wildcards"]["item"] for j in jobs["download_qa"]].count("dpr-wikipedia") == 1
    assert {j["wildcards"]["item"] for j in jobs["download_qa"]} == {
        "dpr-wikipedia", "nq-open", "tqa-open", "mkqa",
    }  # fmt: skip
    assert [j["wildcards"]["collection"] for j in jobs["convert_passages"]] == ["dpr-wikipedia"]
    assert len(jobs["mkqa_questions"]) == 1
    models = {
        "contriever-qa", "contriever-trained-qa", "mcontriever-released",
        "mcontriever-msmarco-released", "mcontriever-qa",
    }  # fmt: skip
    corpus = [j for j in jobs["encode_corpus"] if j["wildcards"]["unit"] == "dpr-wikipedia"]
    assert len(corpus) == 64 * len(models)
    assert {j["wildcards"]["model"] for j in corpus} == models
    # questions: NQ and TriviaQA for the two English models, 26 MKQA languages for three
    searched = {(j["wildcards"]["model"], j["wildcards"]["unit"]) for j in jobs["search"]}
    assert len(searched) == 2 * 2 + 3 * 26
    for rule in ("encode_corpus", "encode_queries", "search"):
        for job in jobs[rule]:
            res = job["resources"]
            assert res.get("gpu") == "1" and "gpus" not in res, (rule, res)
            assert int(res["mem_mb"]) >= 32000 and int(res["cpus_per_task"]) >= 4, (rule, res)
    assert len(jobs["evaluate_qa"]) == 2 * 2 + 3 * 26
    # exact search over the 64 shards, top 100, nothing dropped (question ids are not doc ids)
    search = re.findall(r"(?m)^Shell command: .*scripts/search\.py .*tqa-open.*$", out)
    assert search and all(cmd.count("--shard ") == 64 for cmd in search)
    assert all("--top-k 100 --keep-identical-ids" in cmd for cmd in search)
    # released checkpoints fetched on the submit host; fp16 and mContriever's text settings
    prefetched = {j["wildcards"]["repo"] for j in jobs["prefetch_model"]}
    assert {"facebook--mcontriever", "facebook--mcontriever-msmarco"} <= prefetched


def test_an_approximate_index_is_built_once_per_model_and_collection(fake_slurm, tmp_path):
    overlay = tmp_path / "ann.yaml"
    overlay.write_text(
        "extends: config/config.yaml\n"
        "qa: {index: {factory: auto, train_size: 1000000, "
        "search_params: {nprobe: 128}}}\n"
    )
    proc = snakemake(
        "-n", "--profile", "slurm", "results/table1.csv", "--nolock",
        "--configfile", str(overlay), cwd=ROOT, env={"PATH": fake_slurm["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    jobs = _jobs(out)
    assert sorted(j["wildcards"]["model"] for j in jobs["build_index"]) == [
        "contriever-qa",
        "contriever-trained-qa",
    ]
    assert all(j["resources"].get("gpu") == "1" for j in jobs["build_index"])
    search = re.findall(r"(?m)^Shell command: .*scripts/search\.py .*$", out)
    assert search and all("--index " in c and "--shard " not in c for c in search)
    assert all("--search-param nprobe=128" in c for c in search)
    # the best 1,000 candidates are re-scored exactly from the 64 shards
    assert all(c.count("--rerank-shard ") == 64 and "--rerank-depth 1000" in c for c in search)
    build = re.findall(r"(?m)^Shell command: .*scripts/build_index\.py .*$", out)
    assert build and all("--factory auto" in c and c.count("--shard ") == 64 for c in build)
    # the recall report is a target of its own: exact search, then the comparison
    proc = snakemake(
        "-n", "results/index_recall/contriever-qa/nq-open.json", "--nolock",
        "--configfile", str(overlay), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule index_recall:" in proc.stdout
