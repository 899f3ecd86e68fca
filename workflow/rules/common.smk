# Helpers shared by the rules: they only look up config and paths; the logic behind
# them (units, model kinds, table requirements) lives in lib/contriever_repro/plan.py.

import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(workflow.basedir) / "lib"))

from contriever_repro import plan
from contriever_repro.training import launch
from contriever_repro.training import runfolder  # noqa: E402

WORK = config["work_dir"]
RESULTS = config["results_dir"]
PY = sys.executable
# Drop hits whose doc id equals the query id (beir's convention) in search and scoring.
IDENTICAL_IDS = (
    "--drop-identical-ids"
    if config["evaluation"]["ignore_identical_ids"]
    else "--keep-identical-ids"
)
SCRIPTS = str(Path(workflow.basedir) / "scripts")
# Device of encoding jobs (auto | cuda | cpu); a job given GPUs that sees no CUDA fails.
DEVICE = config.get("device", "auto")
# Attention kernels of every job that runs an encoder (models/attention.py).
SDPA_BACKENDS = plan.sdpa_backends(config)
# Exact search's engine (faiss | torch); an approximate index is FAISS's.
SEARCH_BACKEND = plan.search_backend(config)
# Where downloads come from is not what they are (their md5 is): the download rules read
# the mirror from this global in their shell command, formatted when the job runs, and
# not from a param. Snakemake's `params` trigger records the params' values and its
# `code` trigger the unformatted shell text, so changing or removing the mirror re-runs
# nothing.
MIRROR = config.get("mirror") or ""

with open(config["beir_catalog"]) as fh:
    BEIR_CATALOG = yaml.safe_load(fh)

plan.check_reports(config)  # tables and figures, incl. check_references
plan.check_pretraining(config)
DATASET_UNITS = plan.dataset_units(config, BEIR_CATALOG)
UNITS = {u.name: u for units in DATASET_UNITS.values() for u in units}
# Open-domain QA and MKQA: question sets (data sets of the tables) over passage collections.
QA_SETS = plan.qa_sets(config)
COLLECTIONS = config.get("passage_collections") or {}
MKQA = config.get("mkqa") or {}
MKQA_SETS = [name for name, qa in QA_SETS.items() if qa.kind == "mkqa"]
QA = plan.qa_settings(config)


wildcard_constraints:
    unit=r"[A-Za-z0-9_.\-]+",
    dataset=r"[A-Za-z0-9_.\-]+",
    model=r"[A-Za-z0-9_.\-]+",
    shard=r"\d+",
    n=r"\d+",
    table=plan.REPORT_KEYS["tables"],
    figure=plan.REPORT_KEYS["figures"],


def one_of(names):
    """Wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(map(re.escape, names)) or "^$"


def res(rule_name, key, fallback=None):
    """Resource `key` of a rule from config.resources (its `default` block as fallback)."""
    table = config.get("resources", {})
    return table.get(rule_name, {}).get(
        key, table.get("default", {}).get(key, fallback)
    )


def slurm_placement(gpu):
    """slurm_account / slurm_partition of a submitted job, from the config's slurm_*
    keys (only those set, so the profile's default-resources still apply otherwise)."""
    return plan.slurm_placement(config, gpu)


def rule_resources(rule_name):
    """Only what the config sets: anything else comes from the profile's default-resources
    (never a 0 that SLURM would read as "all the node's memory"); GPU rules go to the
    GPU partition, the others to the CPU partition."""
    keys = ("gpu", "cpus_per_task", "mem_mb", "runtime")
    out = {k: v for k in keys if (v := res(rule_name, k)) is not None}
    return {**out, **slurm_placement(bool(out.get("gpu")))}


def convert_mem_mb(wildcards, attempt):
    """Memory of a BEIR conversion, from the size of its corpus.jsonl (known once the
    data set is unpacked; Snakemake re-evaluates resources just before submitting)."""
    corpus = Path(unit_source_folder(wildcards)) / "corpus.jsonl"
    size = corpus.stat().st_size if corpus.is_file() else None
    return plan.convert_mem_mb(size, attempt, fallback=res("convert", "mem_mb", 8000))


def model_cfg(model):
    plan.model_kind(config, model)  # raises a clear error for an unknown model
    return config["models"][model]


def model_spec_json(model):
    cfg = dict(model_cfg(model))
    return json.dumps({"name": model, **cfg}, sort_keys=True)


# Hub repositories (dense models, tokenizers, pre-training inits), by folder slug:
# fetched on the submit host (rule prefetch_model, a localrule) into models/hub/<slug>;
# cluster jobs read that folder, offline.
HUB = plan.hub_sources(config)
if workflow.is_main_process:
    for _source in HUB.values():
        if _warning := plan.revision_warning(_source):
            print(f"warning: {_warning}", file=sys.stderr)


def model_folder(model):
    """The local folder a dense model is loaded from: built by this workflow, or its
    hub snapshot prefetched by rule prefetch_model; [] for a local folder (read in place).
    """
    folder = plan.model_location(model_cfg(model).get("source", ""), WORK)
    return [folder] if folder else []


def source_arg(model):
    """`--source <folder>` for a built or prefetched model, else nothing."""
    folder = model_folder(model)
    return f"--source {shlex.quote(folder[0])}" if folder else ""


def unit_tables(unit):
    """The parquet tables of a BEIR unit, or of a question set (its collection's corpus,
    its questions and their answers)."""
    base = f"{WORK}/data/{unit}"
    if unit in QA_SETS:
        collection = QA_SETS[unit].collection
        return {
            "corpus": f"{WORK}/data/{collection}/corpus.parquet",
            "queries": f"{base}/queries.parquet",
            "answers": f"{base}/answers.parquet",
        }
    return {
        "corpus": f"{base}/corpus.parquet",
        "queries": f"{base}/queries.parquet",
        "qrels": f"{base}/qrels.parquet",
    }


def corpus_shards(model, unit):
    """Embedding shards of a unit's corpus; a question set searches its collection's."""
    if unit in QA_SETS:
        unit = QA_SETS[unit].collection
    n = UNITS[unit].shards if unit in UNITS else int(COLLECTIONS[unit].get("shards", 1))
    return [f"{WORK}/embeddings/{model}/{unit}/corpus.{i}-of-{n}.npy" for i in range(n)]


def index_prefix(model, unit):
    """The approximate index a question set is searched with (qa.index), or None."""
    if unit not in QA_SETS or not QA["index"]:
        return None
    return f"{WORK}/indexes/{model}/{QA_SETS[unit].collection}"


def rerank_depth():
    """Candidates of the approximate index re-scored exactly from the shards (0: none)."""
    return int((QA["index"] or {}).get("rerank_depth", 1000))


def search_inputs(wildcards):
    """The embedding shards (exact search), or the approximate index, with the shards
    when its candidates are re-scored."""
    shards = corpus_shards(wildcards.model, wildcards.unit)
    prefix = index_prefix(wildcards.model, wildcards.unit)
    if prefix:
        index = [f"{prefix}.faiss", f"{prefix}.ids.parquet", f"{prefix}.json"]
        return index + (shards if rerank_depth() else [])
    return shards


def _shard_prefixes(files):
    return [s[: -len(".npy")] for s in files if s.endswith(".npy")]


def search_corpus_args(wildcards, input, exact=False):
    """`--shard P ...` (exact search over the embedding shards) or `--index P` with its
    search parameters and re-scoring shards (approximate index), each value quoted."""
    prefix = None if exact else index_prefix(wildcards.model, wildcards.unit)
    shards = _shard_prefixes(input.shards)
    if prefix:
        params = (QA["index"] or {}).get("search_params") or {}
        args = [f"--index {shlex.quote(prefix)}"]
        args += [f"--search-param {shlex.quote(f'{k}={v}')}" for k, v in params.items()]
        if rerank_depth():
            args += [f"--rerank-shard {shlex.quote(s)}" for s in shards]
            args.append(f"--rerank-depth {rerank_depth()}")
        return " ".join(args)
    args = [f"--shard {shlex.quote(s)}" for s in shards]
    return " ".join([*args, f"--backend {shlex.quote(SEARCH_BACKEND)}"])


def search_top_k(wildcards):
    return QA["top_k"] if wildcards.unit in QA_SETS else config["evaluation"]["top_k"]


def search_identical(wildcards):
    """Question and passage ids are unrelated namespaces: nothing is dropped for QA."""
    return "--keep-identical-ids" if wildcards.unit in QA_SETS else IDENTICAL_IDS


def qa_source(item):
    """Config of a downloadable QA input: a collection, a question set or `mkqa`."""
    if item == "mkqa":
        return MKQA
    if item in COLLECTIONS:
        return COLLECTIONS[item]
    return config["qa_sets"][item]


def qa_raw_input(item):
    """What the conversion of a QA input depends on: the download, the local file, or
    the demo world's folder."""
    cfg = qa_source(item)
    source = cfg.get("source", "url")
    if source == "local":
        return cfg["path"]
    if source == "demo":
        return f"{WORK}/raw/demo"
    return f"{WORK}/downloads/qa/{item}/{Path(cfg['url'].split('?')[0]).name}"


def qa_raw_file(item, input):
    """The file the conversion of a QA input reads: its input, or a file of the demo
    world's folder."""
    cfg = qa_source(item)
    if cfg.get("source", "url") == "demo":
        return f"{input[0]}/{cfg['path']}"
    return input[0]


def run_path(model, unit):
    kind = plan.model_kind(config, model)
    return f"{WORK}/runs/{kind}/{model}/{unit}.parquet"


def dataset_metrics(model, dataset):
    return f"{WORK}/metrics/{model}/datasets/{dataset}.parquet"


def table_inputs(kind, name):
    spec = config[kind][name]
    pairs = sorted(set(plan.table_cells(spec)))
    return [dataset_metrics(m, d) for m, d in pairs]


def beir_entry(dataset):
    return BEIR_CATALOG["datasets"][config["datasets"][dataset].get("catalog", dataset)]


def beir_url(dataset):
    entry = beir_entry(dataset)
    catalog_name = config["datasets"][dataset].get("catalog", dataset)
    return entry.get("url", f"{BEIR_CATALOG['base_url']}/{catalog_name}.zip")


def unit_source_folder(wildcards):
    """The BEIR-format folder a unit is converted from (sub-forum folder for groups)."""
    u = UNITS[wildcards.unit]
    if u.source == "local":
        base = u.path
    elif u.source == "demo":
        base = f"{WORK}/raw/demo/{u.dataset}"
    elif u.source == "mrtydi":
        base = f"{WORK}/raw/mrtydi/{u.dataset}"
    else:
        base = f"{WORK}/raw/beir/{u.dataset}"
    return f"{base}/{u.subset}" if u.subset else base


def unit_source_input(wildcards):
    u = UNITS[wildcards.unit]
    if u.source == "local":
        # A folder outside the workflow, read in place, never copied; its files are
        # inputs, so an edited file re-runs the conversion.
        return plan.local_unit_files(u)
    if u.source == "demo":
        return f"{WORK}/raw/demo"
    if u.source == "mrtydi":
        return f"{WORK}/raw/mrtydi/{u.dataset}"
    return f"{WORK}/raw/beir/{u.dataset}"


# ------------------------------------------------------------ Mr. TyDi helpers

MRTYDI = config.get("mrtydi") or {}
MRTYDI_SETS = [
    name
    for name, cfg in (config.get("datasets") or {}).items()
    if (cfg or {}).get("source") == "mrtydi"
]


def mrtydi_archive_name(dataset):
    """`mrtydi-v1.1-<name>.tar.gz`, the release archive of the data set's language."""
    from contriever_repro.data.mrtydi import archive_root

    return f"{archive_root(config['datasets'][dataset]['language'])}.tar.gz"


def mrtydi_archive_input(dataset):
    """The archive a Mr. TyDi data set is unpacked from: downloaded, a local file (read
    in place) or the demo world's folder (which holds it)."""
    archive = config["datasets"][dataset].get("archive")
    if archive == "demo":
        return f"{WORK}/raw/demo"
    if archive:
        return archive
    return f"{WORK}/downloads/mrtydi/{mrtydi_archive_name(dataset)}"


def mrtydi_archive_file(dataset, input):
    if config["datasets"][dataset].get("archive") == "demo":
        return f"{input[0]}/mrtydi/{mrtydi_archive_name(dataset)}"
    return input[0]


# ------------------------------------------------------------ cross-encoder re-ranking

RERANK_MODELS = [
    m
    for m, cfg in (config.get("models") or {}).items()
    if (cfg or {}).get("type") == "rerank"
]


def rerank_cfg(model):
    """The re-ranking model with its cross-encoder's settings (`cross_encoder_config`)."""
    return plan.rerank_config(config, model)


def cross_encoder_input(model):
    """The cross-encoder's folder as an input: built here or prefetched; [] for a local
    folder (read in place)."""
    source = rerank_cfg(model)["cross_encoder_config"]["source"]
    folder = plan.model_location(source, WORK)
    return [folder] if folder else []


def cross_encoder_path(model):
    source = rerank_cfg(model)["cross_encoder_config"]["source"]
    return plan.model_location(source, WORK) or source


def query_shards(unit):
    """Jobs a re-ranking of the unit's queries is split into (datasets.<name>.query_shards)."""
    return int(config["datasets"][UNITS[unit].dataset].get("query_shards", 1))


def rerank_shard_runs(model, unit):
    n = query_shards(unit)
    return [f"{WORK}/runs/rerank/{model}/{unit}.{i}-of-{n}.parquet" for i in range(n)]


def rerank_args(wildcards):
    """Optional arguments of a re-ranking job, each value quoted."""
    ce = rerank_cfg(wildcards.model)["cross_encoder_config"]
    label = ce.get("label_index")
    return f"--label-index {shlex.quote(str(label))}" if label is not None else ""


def all_targets():
    out = []
    for name in config.get("tables", {}):
        out += [
            f"{RESULTS}/{name}.csv",
            f"{RESULTS}/{name}.parquet",
            f"{RESULTS}/{name}.md",
        ]
    for name in config.get("figures", {}):
        out += [f"{RESULTS}/{name}.png", f"{RESULTS}/{name}.csv"]
    return out


# ------------------------------------------------------------ pre-training helpers

CORPORA = config.get("pretraining_corpora") or {}
TOKENIZERS = config.get("tokenizers") or {}
PRETRAINING = config.get("pretraining") or {}


def corpus_cfg(corpus):
    return CORPORA[corpus]


def corpus_urls(corpus):
    """file name -> URL of every file a corpus downloads."""
    cfg = corpus_cfg(corpus)
    urls = [cfg["url"]] + ([cfg["index_url"]] if cfg.get("index_url") else [])
    return {Path(u).name: u for u in urls}


def corpus_raw(corpus):
    """{"input": ..., "index": ...} files prepare_corpus reads."""
    cfg = corpus_cfg(corpus)
    kind = cfg["kind"]
    if kind == "demo":
        return {"input": f"{WORK}/raw/demo"}
    if kind == "text":
        return {}  # a local file, read in place
    files = {"input": f"{WORK}/downloads/corpora/{corpus}/{Path(cfg['url']).name}"}
    if cfg.get("index_url"):
        files["index"] = (
            f"{WORK}/downloads/corpora/{corpus}/{Path(cfg['index_url']).name}"
        )
    return files


def corpus_prepare_args(wildcards, input):
    cfg = corpus_cfg(wildcards.corpus)
    kind = cfg["kind"]
    if kind == "demo":
        src = f"{input.input}/pretraining/{cfg['stream']}.txt"
        kind = "text"
    elif kind == "text":
        src = cfg["path"]
    else:
        src = input.input
    args = f"--kind {shlex.quote(kind)} --input {shlex.quote(src)}"
    if "index" in input.keys():
        args += f" --index {shlex.quote(input.index)}"
    if cfg.get("unit"):
        args += f" --unit {shlex.quote(cfg['unit'])}"
    if cfg.get("min_chars") is not None:
        args += f" --min-chars {shlex.quote(str(cfg['min_chars']))}"
    return args


def tokenizer_source(tok):
    return (tokenizer_input(tok) or [TOKENIZERS[tok]["source"]])[0]


def tokenizer_input(tok):
    """The tokenizer's folder: built by this workflow or prefetched from the hub."""
    folder = plan.model_location(TOKENIZERS[tok]["source"], WORK)
    return [folder] if folder else []


def shard_files(tok, corpus):
    n = corpus_cfg(corpus).get("shards", 1)
    width = max(3, len(str(n - 1)))
    return [
        f"{WORK}/tokens/{tok}/{corpus}/{corpus}.{i:0{width}d}.json" for i in range(n)
    ]


def experiment(name):
    return plan.pretrain_config(config, name)


def pretrain_inputs(name):
    check_run_folder(name)
    cfg = experiment(name)
    files = [f for src in cfg.sources for f in shard_files(cfg.tokenizer, src)]
    init = pretrain_init(name)
    return files + ([init] if init != cfg.init else [])


def pretrain_run_dir(name):
    return f"{WORK}/pretrain/{name}"


def check_run_folder(name):
    """Refuse, before any job is submitted, an experiment whose configuration differs
    from the one its run folder's checkpoints were made with (a retry cannot fix it)."""
    record = runfolder.experiment_record(
        experiment(name).training_dict(), pretrain_init(name)
    )
    changes = runfolder.config_changes(pretrain_run_dir(name), record)
    if changes:
        raise plan.InputError(
            runfolder.changed_config_message(name, pretrain_run_dir(name), changes)
        )


def pretrain_init(name):
    """The init model's folder: built by this workflow or prefetched from the hub."""
    init = experiment(name).init
    return plan.model_location(init, WORK) or init


def pretrain_sources(name):
    cfg = experiment(name)
    return " ".join(
        shlex.quote(f"--source={src}={WORK}/tokens/{cfg.tokenizer}/{src}")
        for src in cfg.sources
    )


def pretrain_launch(name, resources):
    cfg = experiment(name)
    return launch.launch_prefix(
        PY,
        cfg.nodes,
        cfg.gpus_per_node,
        cpus_per_node=resources.get("cpus_per_task", 1),
        device=cfg.device,
        mpi=resources.get("mpi") or "srun",
    )


def pretrain_resources(name):
    cfg = experiment(name)
    return launch.job_resources(
        name,
        launch.slurm_resources(
            cfg.nodes, cfg.gpus_per_node, cfg.device, cfg.num_workers
        ),
        slurm_placement(gpu=True),
        config.get("resources", {}).get("pretrain", {}),
        {key: res("pretrain", key) for key in ("mem_mb", "runtime")},
    )


# Every resource name a pre-training job can have (the rule's resources are static
# names; each job leaves out what it does not use: None).
PRETRAIN_RESOURCE_KEYS = sorted(
    {
        "nodes",
        "gpu",
        "mpi",
        "tasks",
        "slurm_extra",
        "cpus_per_task",
        "mem_mb",
        "runtime",
    }
    | set(plan.slurm_placement(config, gpu=True))
    | set(config.get("resources", {}).get("pretrain", {}))
)


def time_limit_arg(wildcards, resources):
    runtime = resources.get("runtime")
    return f"--time-limit-min {shlex.quote(str(runtime))}" if runtime else ""


# ------------------------------------------------------------ fine-tuning helpers

FINETUNING = config.get("finetuning") or {}
plan.check_finetuning(config)


def finetune_experiment(name):
    return plan.finetune_config(config, name)


def dataset_folder(dataset):
    """The BEIR-format folder of a (single-collection) data set, as converted."""
    return unit_source_folder(SimpleNamespace(unit=dataset))


def training_tables(dataset, split):
    base = f"{WORK}/finetune/data/{dataset}/{split}"
    return {
        "queries": f"{base}/queries.parquet",
        "records": f"{base}/records.parquet",
    }


def training_source_input(wildcards):
    """What the training-split conversion reads: the data set's folder (downloaded or
    generated), or the queries and qrels files of a local folder (edits re-run it)."""
    u = UNITS[wildcards.dataset]
    if u.source == "local":
        return [f"{u.path}/queries.jsonl", f"{u.path}/qrels/{wildcards.split}.tsv"]
    return unit_source_input(SimpleNamespace(unit=wildcards.dataset))


def model_source_folder(source):
    """The folder a model `source` is read from (built, prefetched or local)."""
    return plan.model_location(source, WORK) or source


def mined_file(name, dataset):
    """Hard negatives mined for experiment `name` on one of its data sets."""
    return f"{WORK}/finetune/mined/{name}/{dataset}.parquet"


def finetune_inputs(name):
    """Named inputs of a fine-tuning job; optional ones only where the experiment uses
    them (phase 2: mined negatives and the phase-1 model; few-shot: a dev split)."""
    cfg = finetune_experiment(name)
    data = cfg.datasets
    files = {
        "corpus": [unit_tables(d)["corpus"] for d in data],
        "queries": [training_tables(d, cfg.train_split)["queries"] for d in data],
        "records": [training_tables(d, cfg.train_split)["records"] for d in data],
    }
    init = model_source_folder(cfg.init)
    if init != cfg.init:
        files["init"] = init
    if cfg.mined_by:
        files["mined"] = [mined_file(name, d) for d in data]
        files["mined_by_model"] = f"{WORK}/models/{cfg.mined_by}"
    if cfg.dev_split:
        dev = training_tables(data[0], cfg.dev_split)
        files["dev_queries"], files["dev_records"] = dev["queries"], dev["records"]
    return files


def finetune_args(wildcards, input):
    """The data sets' files (in `data` order, one --dataset group each) and the optional
    arguments of the fine-tuning script, each value quoted."""
    cfg = finetune_experiment(wildcards.name)
    args = []
    for i, dataset in enumerate(cfg.datasets):
        args += [f"--dataset {shlex.quote(dataset)}"]
        for key in ("corpus", "queries", "records", "mined"):
            if key in input.keys():
                args.append(f"--{key} {shlex.quote(str(input[key][i]))}")
    flags = {
        "mined_by_model": "--mined-by-model",
        "dev_queries": "--dev-queries",
        "dev_records": "--dev-records",
    }
    args += [
        f"{flag} {shlex.quote(str(input[key]))}"
        for key, flag in flags.items()
        if key in input.keys()
    ]
    return " ".join(args)


def finetune_resources(name):
    cfg = finetune_experiment(name)
    return launch.job_resources(
        name,
        launch.slurm_resources(
            cfg.nodes, cfg.gpus_per_node, cfg.device, cfg.num_workers
        ),
        slurm_placement(gpu=True),
        config.get("resources", {}).get("finetune", {}),
        {key: res("finetune", key) for key in ("mem_mb", "runtime")},
    )


def finetune_launch(name, resources):
    cfg = finetune_experiment(name)
    return launch.launch_prefix(
        PY,
        cfg.nodes,
        cfg.gpus_per_node,
        cpus_per_node=resources.get("cpus_per_task", 1),
        device=cfg.device,
        mpi=resources.get("mpi") or "srun",
    )


FINETUNE_RESOURCE_KEYS = sorted(
    set(PRETRAIN_RESOURCE_KEYS) | set(config.get("resources", {}).get("finetune", {}))
)


def mining_inputs(name, dataset):
    """Phase 2's mining on one of the experiment's data sets: the phase-1 model, its
    embeddings of that collection (the sharded encoding jobs, shared with its
    evaluation), the training queries and records."""
    cfg = finetune_experiment(name)
    miner_model = plan.mining_model(config, name, cfg.mined_by)
    return {
        "model": f"{WORK}/models/{cfg.mined_by}",
        "shards": corpus_shards(miner_model, dataset),
        "corpus": unit_tables(dataset)["corpus"],
        **training_tables(dataset, cfg.train_split),
    }


# (experiment, data set) pairs that mining builds: the wildcard constraints of its rule.
MINED = [
    (n, d)
    for n in FINETUNING
    if (FINETUNING[n] or {}).get("mined_by")
    for d in finetune_experiment(n).datasets
]
