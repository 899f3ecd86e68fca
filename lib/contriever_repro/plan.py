"""Turn the experiment config into the concrete jobs the Snakefile expands.

Keeping this out of the .smk files makes the mapping from a table cell to the runs
behind it testable: a table names models and data sets; a data set expands into one
or more evaluation units (CQADupStack into its 12 sub-forums); a model is dense
(encode + FAISS) or BM25; a dense model's weights come from the hub, a local folder,
or a model folder built by this workflow.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .models.attention import DEFAULT_SDPA_BACKENDS, check_sdpa_backends
from .models.hub import (  # noqa: F401 (plan.<name> is what the rules use)
    COMMIT_HASH,
    WORKFLOW_PREFIX,
    HubSource,
    hub_slug,
    is_hub_id,
    revision_warning,
)

SUBSET_SEP = "--"
# Output names the `table` and `figure` rules accept (their wildcard constraints): a
# config key that does not match has no rule to build it.
# `tableN`/`tableNa` for the paper's, `table-<name>` for a user's own (e.g. table-own).
REPORT_KEYS = {
    "tables": r"table(?:\d+[a-z]?|-[a-z0-9][a-z0-9_-]*)",
    "figures": r"figure(?:\d+[a-z]?|-[a-z0-9][a-z0-9_-]*)",
}


@dataclass(frozen=True)
class Unit:
    """One evaluated collection: a data set, or one sub-forum of a grouped data set."""

    name: str
    dataset: str
    subset: str | None
    split: str
    source: str  # "beir" (download), "local" (folder), "demo" (generated), "mrtydi" (archive)
    path: str | None  # local folder, for source == "local"
    shards: int


def resolve_extends(config: dict, base_dir: str | Path = ".") -> dict:
    """The config a run uses: an overlay with `extends: <file>` is merged onto that file.

    A config given with `--configfile` replaces the paper config (the demo is a whole
    config of its own); an overlay that only adds a model or a table names the config it
    builds on instead, and its values (and `--config` ones, already in it) win, merged
    key by key as Snakemake merges config files. Chains of `extends` are followed.
    """
    import yaml

    config = dict(config)
    seen: list[str] = []
    while base := config.pop("extends", None):
        path = Path(base_dir) / base
        if str(path) in seen:
            raise InputError(f"extends: cycle through {path}")
        seen.append(str(path))
        if not path.is_file():
            raise InputError("extends: the config file it names does not exist", path)
        with open(path, encoding="utf-8") as fh:
            parent = yaml.safe_load(fh) or {}
        config = _merged(parent, config)
    if "work_dir" not in config:
        raise InputError(
            "config has no work_dir: a --configfile replaces config/config.yaml. To add "
            "models or tables to the paper (or the demo) config, start your file with "
            "`extends: config/config.yaml` (or config/demo.yaml)"
        )
    return config


def _merged(base: Mapping, overlay: Mapping) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def dataset_units(config: dict, catalog: dict) -> dict[str, list[Unit]]:
    """Every configured data set with its evaluation units, in config order."""
    out: dict[str, list[Unit]] = {}
    beir = catalog.get("datasets", {})
    for name, cfg in (config.get("datasets") or {}).items():
        cfg = cfg or {}
        source = cfg.get("source", "beir")
        entry = beir.get(cfg.get("catalog", name), {}) if source == "beir" else {}
        if source == "beir":
            if cfg.get("catalog", name) not in beir:
                raise InputError(f"datasets.{name}: not in the BEIR catalog; set source: local")
            if entry.get("public", True) is False:
                raise InputError(
                    f"datasets.{name}: not freely downloadable; build it and use "
                    "source: local with path: <BEIR folder>"
                )
        if source == "local" and not cfg.get("path"):
            raise InputError(f"datasets.{name}: source local needs a path")
        if source == "mrtydi":
            check_mrtydi_dataset(config, name)
        split = cfg.get("split", entry.get("split", "test"))
        subsets = cfg.get("subsets", entry.get("subsets"))
        shards = int(cfg.get("shards", 1))
        if subsets:
            out[name] = [
                Unit(f"{name}{SUBSET_SEP}{s}", name, s, split, source, cfg.get("path"), shards)
                for s in subsets
            ]
        else:
            out[name] = [Unit(name, name, None, split, source, cfg.get("path"), shards)]
    return out


def check_mrtydi_dataset(config: dict, name: str) -> None:
    """A `source: mrtydi` data set names one of Mr. TyDi's 11 languages, and its archive
    is downloaded (`mrtydi.url`), a local file (`archive: <path>`) or the demo world's
    (`archive: demo`)."""
    from .data.mrtydi import MRTYDI_LANGUAGES

    cfg = (config.get("datasets") or {})[name] or {}
    language = cfg.get("language")
    if language not in MRTYDI_LANGUAGES:
        raise InputError(
            f"datasets.{name}.language: Mr. TyDi has no language {language!r} "
            f"(its 11: {', '.join(MRTYDI_LANGUAGES)})"
        )
    if not cfg.get("archive") and not (config.get("mrtydi") or {}).get("url"):
        raise InputError(
            f"datasets.{name}: a Mr. TyDi data set needs `mrtydi.url` (the release archives) "
            "or its own `archive: <path to mrtydi-v1.1-<name>.tar.gz>`"
        )


def mrtydi_download(config: dict, filename: str) -> tuple[str, str]:
    """(URL, md5 or "") of a release archive `mrtydi-v1.1-<name>.tar.gz`: `mrtydi.url`
    with its `{name}`, and the md5 pinned for that language under `mrtydi.md5s`."""
    from .data.mrtydi import MRTYDI_LANGUAGES, archive_root

    by_file = {f"{archive_root(code)}.tar.gz": code for code in MRTYDI_LANGUAGES}
    if filename not in by_file:
        raise InputError(
            f"{filename}: not a Mr. TyDi v1.1 archive (e.g. mrtydi-v1.1-swahili.tar.gz)"
        )
    cfg = config.get("mrtydi") or {}
    code = by_file[filename]
    return cfg["url"].format(name=MRTYDI_LANGUAGES[code]), (cfg.get("md5s") or {}).get(code) or ""


# ------------------------------------------------------------ open-domain QA and MKQA

QA_DEFAULTS = {"top_k": 100, "k_values": [1, 5, 10, 20, 50, 100], "index": None}


@dataclass(frozen=True)
class QASet:
    """One question set retrieving from a passage collection (Table 1's NQ and TriviaQA,
    or one MKQA language): hits are judged by DPR's answer match, not by qrels."""

    name: str
    collection: str
    kind: str  # "questions" (a question file of its own) or "mkqa" (one language of MKQA)
    language: str | None  # MKQA language code
    normalize_answers: bool  # the authors' text normaliser on passages and answers (MKQA)


def qa_settings(config: dict) -> dict:
    """`qa:` with its defaults: top_k retrieved per question, the k of R@k, the index."""
    return {**QA_DEFAULTS, **(config.get("qa") or {})}


def qa_sets(config: dict) -> dict[str, QASet]:
    """Every question set: `qa_sets` entries, then one `<prefix><lang>` per MKQA language,
    each checked against the collections, the data sets and MKQA's own languages."""
    collections = config.get("passage_collections") or {}
    datasets = config.get("datasets") or {}
    out: dict[str, QASet] = {}

    def add(where: str, qa: QASet) -> None:
        if qa.collection not in collections:
            raise InputError(
                f"{where}.collection: '{qa.collection}' is not defined under "
                f"passage_collections (known: {sorted(collections)})"
            )
        if qa.name in datasets or qa.name in collections or qa.name in out:
            raise InputError(f"{where}: the name '{qa.name}' is already used")
        out[qa.name] = qa

    for name, cfg in (config.get("qa_sets") or {}).items():
        cfg = cfg or {}
        qa = QASet(name, str(cfg.get("collection", "")), "questions", None,
                   bool(cfg.get("normalize_answers", False)))  # fmt: skip
        add(f"qa_sets.{name}", qa)
    mkqa = config.get("mkqa")
    if mkqa:
        from .data.mkqa import MKQA_LANGUAGES

        languages = mkqa.get("languages") or list(MKQA_LANGUAGES)
        for lang in languages:
            if lang not in MKQA_LANGUAGES:
                raise InputError(
                    f"mkqa.languages: MKQA has no language '{lang}' (its 26 codes: "
                    f"{', '.join(MKQA_LANGUAGES)}; Chinese is zh_cn, zh_hk, zh_tw)"
                )
        for lang in languages:
            name = f"{mkqa.get('prefix', 'mkqa-')}{lang}"
            qa = QASet(name, str(mkqa.get("collection", "")), "mkqa", lang,
                       bool(mkqa.get("normalize_answers", False)))  # fmt: skip
            add("mkqa", qa)
    for name in collections:
        if name in datasets:
            raise InputError(f"passage_collections.{name}: the name is also a data set")
    return out


def qa_source_config(config: dict, name: str) -> dict:
    """Everything that defines a question set's data (for its scores' config hash): its
    `qa_sets` entry or MKQA's with the language, and its collection's entry."""
    qa = qa_sets(config)[name]
    if qa.kind == "mkqa":
        own = {**(config.get("mkqa") or {}), "language": qa.language}
        own.pop("languages", None)
    else:
        own = dict(config["qa_sets"][name])
    return {"questions": own, "collection": config["passage_collections"][qa.collection]}


def local_unit_files(unit: Unit) -> list[str]:
    """The files of a `source: local` unit that its conversion reads (BEIR layout:
    corpus.jsonl, queries.jsonl, qrels/<split>.tsv, in the sub-forum folder for a
    grouped data set): inputs of the rule, so that editing one re-runs the conversion."""
    if unit.source != "local" or not unit.path:
        raise ValueError(f"{unit.name} is not a local data set")
    folder = Path(unit.path) / unit.subset if unit.subset else Path(unit.path)
    return [
        str(folder / "corpus.jsonl"),
        str(folder / "queries.jsonl"),
        str(folder / "qrels" / f"{unit.split}.tsv"),
    ]


def all_units(config: dict, catalog: dict) -> dict[str, Unit]:
    return {u.name: u for units in dataset_units(config, catalog).values() for u in units}


def model_kind(config: dict, model: str) -> str:
    """dense, bm25 or rerank (a first-stage run re-ranked by a cross-encoder)."""
    models = config.get("models") or {}
    if model not in models:
        raise InputError(f"models.{model}: not defined in the config (known: {sorted(models)})")
    kind = (models[model] or {}).get("type", "dense")
    if kind == "rerank":
        rerank_config(config, model)
    return kind


RERANK_DEFAULTS = {"depth": 100}
CROSS_ENCODER_DEFAULTS = {
    "revision": None,
    "max_length": 512,
    "batch_size": 128,
    "dtype": "fp32",
    "label_index": None,
}


def rerank_config(config: dict, model: str) -> dict:
    """A `type: rerank` model with its cross-encoder's settings, checked: the first stage
    is a retrieval model of this config (not itself a re-ranking) and the cross-encoder
    is defined under `cross_encoders`."""
    models = config.get("models") or {}
    cfg = {**RERANK_DEFAULTS, **(models[model] or {})}
    where = f"models.{model}"
    first = cfg.get("first_stage")
    if first not in models:
        raise InputError(
            f"{where}.first_stage: '{first}' is not defined under models (known: {sorted(models)})"
        )
    if (models[first] or {}).get("type") == "rerank":
        raise InputError(f"{where}.first_stage: '{first}' is itself a re-ranking")
    encoders = config.get("cross_encoders") or {}
    name = cfg.get("cross_encoder")
    if name not in encoders:
        raise InputError(
            f"{where}.cross_encoder: '{name}' is not defined under cross_encoders "
            f"(known: {sorted(encoders)})"
        )
    source = str((encoders[name] or {}).get("source", ""))
    built = workflow_model_name(source)
    if built is not None and built not in {**(config.get("finetuning") or {}),
                                           **(config.get("tiny_berts") or {})}:  # fmt: skip
        raise InputError(
            f"cross_encoders.{name}.source: workflow:{built} is built by no fine-tuning "
            "(objective: cross_encoder) or tiny_berts entry"
        )
    if int(cfg["depth"]) > int((config.get("evaluation") or {}).get("top_k", 0)):
        raise InputError(
            f"{where}.depth: {cfg['depth']} is more than the first stage retrieves "
            f"(evaluation.top_k {config['evaluation']['top_k']})"
        )
    return {**cfg, "cross_encoder_config": {**CROSS_ENCODER_DEFAULTS, **encoders[name]}}


def workflow_model_name(source: str) -> str | None:
    """`workflow:<name>` names a model folder that a rule of this workflow builds."""
    return source[len(WORKFLOW_PREFIX) :] if source.startswith(WORKFLOW_PREFIX) else None


def hub_sources(config: dict) -> dict[str, HubSource]:
    """Every hub repository the config uses (dense models, tokenizers, pre-training
    inits), by folder slug. A repository is fetched once, at the revision that any of
    its users pins (models.<m>.revision, tokenizers.<t>.revision); two different pins
    of one repository are an error, since both would read the same snapshot."""
    uses: dict[str, list[tuple[str, str | None]]] = {}
    for name, cfg in (config.get("models") or {}).items():
        cfg = cfg or {}
        if cfg.get("type", "dense") == "dense" and is_hub_id(cfg.get("source", "")):
            uses.setdefault(cfg["source"], []).append((f"models.{name}", cfg.get("revision")))
    for name, cfg in (config.get("cross_encoders") or {}).items():
        if is_hub_id(cfg.get("source", "")):
            uses.setdefault(cfg["source"], []).append(
                (f"cross_encoders.{name}", cfg.get("revision"))
            )
    for name, cfg in (config.get("tokenizers") or {}).items():
        if is_hub_id(cfg.get("source", "")):
            uses.setdefault(cfg["source"], []).append((f"tokenizers.{name}", cfg.get("revision")))
    for name in config.get("pretraining") or {}:
        init = pretrain_config(config, name).init
        if is_hub_id(init):
            uses.setdefault(init, []).append((f"pretraining.{name}.init", None))
    for name in config.get("finetuning") or {}:
        init = finetune_config(config, name).init
        if is_hub_id(init):
            uses.setdefault(init, []).append((f"finetuning.{name}.init", None))
    out = {}
    for repo_id, users in uses.items():
        pins = {key: rev for key, rev in users if rev}
        if len(set(pins.values())) > 1:
            listed = ", ".join(f"{key}: {rev}" for key, rev in pins.items())
            raise InputError(
                f"hub model {repo_id!r} is pinned to different revisions ({listed}); "
                "all users of a repository share one snapshot: give them the same revision"
            )
        source = HubSource(repo_id, next(iter(pins.values()), None), tuple(k for k, _ in users))
        if source.slug in out:
            raise InputError(
                f"hub models {out[source.slug].repo_id!r} and {repo_id!r} would share the "
                f"folder models/hub/{source.slug}"
            )
        out[source.slug] = source
    return out


def slurm_placement(config: dict, gpu: bool) -> dict[str, str]:
    """SLURM account and partition of a submitted job from the config keys
    slurm_account, slurm_gpu_partition (jobs given GPUs) and slurm_cpu_partition (the
    others). Only keys that are set: an unset one leaves the profile's default-resources
    (or the plugin's guess and the cluster's default partition) in charge."""
    out = {}
    if config.get("slurm_account"):
        out["slurm_account"] = str(config["slurm_account"])
    partition = config.get("slurm_gpu_partition" if gpu else "slurm_cpu_partition")
    if partition:
        out["slurm_partition"] = str(partition)
    return out


# Converting a BEIR corpus holds it in memory: peak RSS measured at 3.7x the size of
# corpus.jsonl (325 MB -> 1.2 GB, 5.7 s), so 5x plus the interpreter.
CONVERT_MEM_PER_MB = 5
CONVERT_MEM_BASE_MB = 1000


def convert_mem_mb(corpus_bytes: int | None, attempt: int = 1, fallback: int = 8000) -> int:
    """Memory (MB) for converting a corpus of `corpus_bytes` (None: not unpacked yet, as
    in a dry-run: `fallback`); doubled on each retry, in case a job ran out of memory."""
    if corpus_bytes is None:
        base = fallback
    else:
        base = CONVERT_MEM_BASE_MB + CONVERT_MEM_PER_MB * -(-corpus_bytes // 2**20)
    return int(base * 2 ** (max(attempt, 1) - 1))


def model_location(source: str, work_dir: str) -> str | None:
    """The folder jobs load a model (or tokenizer) `source` from: the one a rule of this
    workflow builds (`workflow:<name>`), or the hub snapshot rule prefetch_model fetches;
    None for a local folder, read in place."""
    built = workflow_model_name(source)
    if built:
        return f"{work_dir}/models/{built}"
    return f"{work_dir}/models/hub/{hub_slug(source)}" if is_hub_id(source) else None


def table_cells(table: dict) -> list[tuple[str, str]]:
    """(model, dataset) pairs whose metrics a table or figure needs computed: every
    computed column, and every point of a queue-sweep figure's series, on every data set.
    A column's model may be a template: `{dataset}` becomes each row's data set."""
    from .reporting.tables import expand_model

    pairs = []
    datasets = table.get("datasets") or []
    for col in table.get("columns") or []:
        if col.get("model"):
            pairs.extend((expand_model(str(col["model"]), ds), ds) for ds in datasets)
    for series in table.get("series") or []:
        for point in (series.get("points") if isinstance(series, dict) else None) or []:
            if isinstance(point, dict) and point.get("model"):
                pairs.extend((point["model"], ds) for ds in datasets)
    return pairs


def report_spec(config: dict, kind: str, name: str) -> dict:
    """A table or figure spec as its rule passes it on: a languages table (Table 12)
    carries the languages the config uses for each row (`row_languages`), so the table is
    rebuilt whenever they change."""
    from .reporting import languages

    spec = dict(config[kind][name])
    if kind == "tables" and languages.is_languages_spec(spec):
        # [row, codes] pairs: the rule's JSON sorts mapping keys, a list keeps the order
        rows = languages.row_languages(config, name, config[kind][name])
        spec["row_languages"] = [[row, codes] for row, codes in rows.items()]
    return spec


def model_card_cells(config: dict, name: str) -> list[tuple[str, str]]:
    """(model, dataset) pairs measured for the model that pre-training `name` exports:
    every evaluated model whose source is `workflow:<name>`, on every data set a table
    or figure evaluates it on (sorted, no duplicates)."""
    models = {
        m
        for m, cfg in (config.get("models") or {}).items()
        if isinstance(cfg, dict) and workflow_model_name(str(cfg.get("source", ""))) == name
    }
    specs = [*(config.get("tables") or {}).values(), *(config.get("figures") or {}).values()]
    return sorted({cell for spec in specs for cell in table_cells(spec) if cell[0] in models})


def stable_hash(obj: Any) -> str:
    """Short hash of a JSON-able object; it changes exactly when the object changes."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def code_version(repo: str | Path = ".") -> str:
    """`git describe` of the checkout (with -dirty), or the package version outside git."""
    from . import __version__

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() or __version__
    except (OSError, subprocess.CalledProcessError):
        return __version__


def check_references(config: dict) -> None:
    """Fail at start-up, naming the key, when a table or figure names an unknown model or
    data set (otherwise the error would surface deep inside the DAG, or not at all). A
    column's model template is checked for each data set it expands to."""
    from .reporting.tables import DATASET_PLACEHOLDER, expand_model

    models = config.get("models") or {}
    datasets = {**(config.get("datasets") or {}), **qa_sets(config)}
    for kind in ("tables", "figures"):
        for name, spec in (config.get(kind) or {}).items():
            if not isinstance(spec, Mapping):
                continue  # malformed specs are named by their own parser (check_reports)
            where = f"{kind}.{name}"
            for ds in spec.get("datasets") or []:
                if isinstance(ds, str) and ds not in datasets:
                    raise InputError(
                        f"{where}.datasets: '{ds}' is not defined under datasets, "
                        f"qa_sets or mkqa.languages (known: {sorted(datasets)})"
                    )
            for i, col in enumerate(spec.get("columns") or []):
                model = col.get("model") if isinstance(col, Mapping) else None
                if not model:
                    continue
                model = str(model)
                if DATASET_PLACEHOLDER not in model:
                    if model not in models:
                        raise InputError(
                            f"{where}.columns[{i}]: model '{model}' is not defined under "
                            f"models (models.{model} missing; known: {sorted(models)})"
                        )
                    continue
                for ds in spec.get("datasets") or []:
                    expanded = expand_model(model, str(ds))
                    if expanded not in models:
                        raise InputError(
                            f"{where}.columns[{i}] ({col.get('name')!r}): model '{expanded}' "
                            f"(template '{model}' for data set '{ds}') is not defined under "
                            f"models (models.{expanded} missing)"
                        )
            for i, series in enumerate(spec.get("series") or []):
                points = series.get("points") if isinstance(series, dict) else None
                for j, point in enumerate(points or []):
                    model = point.get("model") if isinstance(point, dict) else None
                    if model and model not in models:
                        raise InputError(
                            f"{where}.series[{i}].points[{j}]: model '{model}' is not defined "
                            f"under models (models.{model} missing; known: {sorted(models)})"
                        )


def known_metrics(config: dict) -> set[str]:
    """Every metric name the evaluation writes: each family (beir's trec_eval ones and its
    custom MRR, R_cap, Hole, Accuracy) at each of `evaluation.k_values`."""
    from .evaluation.metrics import DEFAULT_K_VALUES, FAMILIES

    ks = (config.get("evaluation") or {}).get("k_values") or DEFAULT_K_VALUES
    known = {f"{family}@{k}" for family in FAMILIES for k in ks}
    if config.get("qa_sets") or config.get("mkqa"):  # top-k retrieval accuracy (R@k)
        known |= {f"accuracy@{k}" for k in qa_settings(config)["k_values"]}
    return known


def _check_computed_metrics(
    where: str, computed: bool, metrics: Iterable[tuple[str, str]], known: set[str], ks: list
) -> None:
    """Each (key, metric) a computed cell reads must be one the evaluation writes."""
    if not computed:
        return  # quoted numbers only: the metric is a key of paper_results, checked there
    for key, metric in metrics:
        if metric not in known:
            raise InputError(
                f"{where}.{key}: metric {metric!r} is not computed by the evaluation "
                f"(families {sorted({m.split('@')[0] for m in known})} at "
                f"evaluation.k_values {ks}); fix the name or add its k to k_values"
            )


def check_reports(config: dict, paper: Mapping | None = None) -> None:
    """Validate every table and figure spec at start-up, so a typo fails `snakemake -n`
    instead of the last job after all encoding and search: the key names a file the
    rules can build, the spec's own schema (tables.parse_table_spec, figures.parse_*),
    its models and data sets (check_references), its paper systems (`paper`, default
    the file config.paper_results) and the metrics its computed cells read.
    Every error names the table or figure and the key."""
    from .reporting import figures, languages, tables

    reports = {kind: config.get(kind) or {} for kind in REPORT_KEYS}
    for kind, pattern in REPORT_KEYS.items():
        if not isinstance(reports[kind], Mapping):
            raise InputError(f"{kind}: expected a mapping of name -> spec")
        for name in reports[kind]:
            if not re.fullmatch(pattern, str(name)):
                stem = kind[:-1]
                raise InputError(
                    f"{kind}.{name}: a {stem} key must look like {stem}N, {stem}N<letter> or "
                    f"{stem}-<name> (e.g. {stem}2, {stem}11b, {stem}-own; pattern {pattern}): "
                    f"the key is the output file name (results_dir/{stem}N...) and the {stem} "
                    "rule builds no other names"
                )
    check_references(config)
    if paper is None and any(reports.values()):
        paper = tables.load_paper_results(config["paper_results"])
    known = known_metrics(config)
    ks = list((config.get("evaluation") or {}).get("k_values") or [])
    parsed: list[tuple[str, Any, bool]] = []
    for name, spec in reports["tables"].items():
        if languages.is_languages_spec(spec):  # Table 12: read from the config itself
            languages.row_languages(config, name, spec)
            continue
        table = tables.parse_table_spec(name, spec, paper)
        parsed.append((f"tables.{name}", table, True))
    for name, spec in reports["figures"].items():
        if figures.figure_kind(name, spec) == "queue_sweep":
            sweep = figures.parse_queue_sweep_spec(name, spec)
            _check_computed_metrics(f"figures.{name}", True, [("metric", sweep.metric)], known, ks)
        else:
            parsed.append((f"figures.{name}", figures.parse_figure_spec(name, spec, paper), False))
    for where, table, is_table in parsed:
        computed = any(c.computed for c in table.columns)
        for i, block in enumerate(table.blocks):
            prefix = f"blocks[{i}]." if is_table else ""
            used = [(f"{prefix}metric_overrides.{d}", m) for d, m in block.overrides.items()]
            if any(d not in block.overrides for d in table.datasets):
                used.insert(0, (f"{prefix}metric", block.metric))
            _check_computed_metrics(where, computed, used, known, ks)


def pretrain_config(config: dict, name: str):
    """The typed experiment `pretraining.<name>`, checked against the rest of the config:
    its sources must be configured corpora, its tokenizer a configured tokenizer."""
    from .training.config import PretrainConfig

    experiments = config.get("pretraining") or {}
    if name not in experiments:
        raise InputError(f"pretraining.{name}: not defined (known: {sorted(experiments)})")
    cfg = PretrainConfig.from_dict(name, experiments[name])
    corpora = config.get("pretraining_corpora") or {}
    for src in cfg.sources:
        if src not in corpora:
            raise InputError(
                f"pretraining.{name}.sources: '{src}' is not defined under pretraining_corpora "
                f"(known: {sorted(corpora)})"
            )
    tokenizers = config.get("tokenizers") or {}
    if cfg.tokenizer not in tokenizers:
        raise InputError(
            f"pretraining.{name}.tokenizer: '{cfg.tokenizer}' is not defined under tokenizers "
            f"(known: {sorted(tokenizers)})"
        )
    return cfg


def check_pretraining(config: dict) -> None:
    """Validate every experiment at start-up, so a typo fails `snakemake -n`, not a job."""
    for name in config.get("pretraining") or {}:
        pretrain_config(config, name)


def finetune_config(config: dict, name: str):
    """The typed experiment `finetuning.<name>`, checked against the rest of the config:
    its data set(s) (each one collection, not a group of sub-forums), its init (a model built
    here must be built by some rule), and the phase-1 experiment that mines for it."""
    from .training.config import FinetuneConfig

    experiments = config.get("finetuning") or {}
    if name not in experiments:
        raise InputError(f"finetuning.{name}: not defined (known: {sorted(experiments)})")
    cfg = FinetuneConfig.from_dict(name, experiments[name])
    where = f"finetuning.{name}"
    datasets = config.get("datasets") or {}
    for data in cfg.datasets:
        if data not in datasets:
            raise InputError(
                f"{where}.data: '{data}' is not defined under datasets (known: {sorted(datasets)})"
            )
        if (datasets[data] or {}).get("subsets"):
            raise InputError(
                f"{where}.data: '{data}' is a group of sub-collections; "
                "fine-tuning needs one collection per data set"
            )
    built = workflow_model_name(cfg.init)
    builders = {
        **(config.get("pretraining") or {}),
        **experiments,
        **(config.get("tiny_berts") or {}),
    }
    if built is not None and built not in builders:
        raise InputError(
            f"{where}.init: workflow:{built} is built by no pre-training, "
            "fine-tuning or tiny_berts entry"
        )
    if built == name:
        raise InputError(f"{where}.init: an experiment cannot start from its own model")
    if cfg.mined_by is not None:
        if cfg.mined_by not in experiments:
            raise InputError(
                f"{where}.mined_by: '{cfg.mined_by}' is not a fine-tuning experiment "
                f"(known: {sorted(experiments)})"
            )
        miner = FinetuneConfig.from_dict(cfg.mined_by, experiments[cfg.mined_by])
        if miner.cross_encoder:
            raise InputError(
                f"{where}.mined_by: '{cfg.mined_by}' trains a cross-encoder, which scores "
                "pairs and cannot encode the collection to mine negatives; name a "
                "bi-encoder experiment"
            )
        mining_model(config, name, cfg.mined_by)
    return cfg


def mining_model(config: dict, name: str, miner: str) -> str:
    """The `models` entry that encodes with the phase-1 model `miner` (its encoding
    settings are the mining's): the one whose source is `workflow:<miner>`."""
    for model, cfg in (config.get("models") or {}).items():
        if isinstance(cfg, dict) and cfg.get("source") == f"{WORKFLOW_PREFIX}{miner}":
            return model
    raise InputError(
        f"finetuning.{name}.mined_by: no entry under models has source "
        f"'{WORKFLOW_PREFIX}{miner}'; add one (its pooling, lengths and batch size are "
        "used to encode the collection and the training queries for mining)"
    )


def check_finetuning(config: dict) -> None:
    """Validate every fine-tuning experiment at start-up; a name may be built once."""
    pretraining = set(config.get("pretraining") or {})
    for name in config.get("finetuning") or {}:
        if name in pretraining:
            raise InputError(
                f"finetuning.{name}: also a pretraining experiment; both would write models/{name}"
            )
        finetune_config(config, name)


def sdpa_backends(config: Mapping) -> str:
    """`attention.sdpa_backends` as the scripts' `--sdpa-backends` value (checked)."""
    attention = config.get("attention") or {}
    names = attention.get("sdpa_backends", DEFAULT_SDPA_BACKENDS)
    return ",".join(check_sdpa_backends(names, "config attention.sdpa_backends"))


def search_backend(config: Mapping) -> str:
    """`search_backend` (exact search: faiss or torch), checked."""
    from .retrieval.search import BACKENDS

    backend = config.get("search_backend", "faiss")
    if backend not in BACKENDS:
        raise InputError(f"config search_backend: must be one of {BACKENDS}, got {backend!r}")
    return backend
