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
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

WORKFLOW_PREFIX = "workflow:"
SUBSET_SEP = "--"


@dataclass(frozen=True)
class Unit:
    """One evaluated collection: a data set, or one sub-forum of a grouped data set."""

    name: str
    dataset: str
    subset: str | None
    split: str
    source: str  # "beir" (download), "local" (folder) or "demo" (generated)
    path: str | None  # local folder, for source == "local"
    shards: int


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


def all_units(config: dict, catalog: dict) -> dict[str, Unit]:
    return {u.name: u for units in dataset_units(config, catalog).values() for u in units}


def model_kind(config: dict, model: str) -> str:
    models = config.get("models") or {}
    if model not in models:
        raise InputError(f"models.{model}: not defined in the config (known: {sorted(models)})")
    return (models[model] or {}).get("type", "dense")


def workflow_model_name(source: str) -> str | None:
    """`workflow:<name>` names a model folder that a rule of this workflow builds."""
    return source[len(WORKFLOW_PREFIX) :] if source.startswith(WORKFLOW_PREFIX) else None


def table_cells(table: dict) -> list[tuple[str, str]]:
    """(model, dataset) pairs whose metrics a table or figure needs computed: every
    computed column, and every point of a queue-sweep figure's series, on every data set."""
    pairs = []
    datasets = table.get("datasets") or []
    for col in table.get("columns") or []:
        if col.get("model"):
            pairs.extend((col["model"], ds) for ds in datasets)
    for series in table.get("series") or []:
        for point in (series.get("points") if isinstance(series, dict) else None) or []:
            if isinstance(point, dict) and point.get("model"):
                pairs.extend((point["model"], ds) for ds in datasets)
    return pairs


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
    data set (otherwise the error would surface deep inside the DAG, or not at all)."""
    models = config.get("models") or {}
    datasets = config.get("datasets") or {}
    for kind in ("tables", "figures"):
        for name, spec in (config.get(kind) or {}).items():
            where = f"{kind}.{name}"
            for ds in spec.get("datasets", []):
                if ds not in datasets:
                    raise InputError(
                        f"{where}.datasets: '{ds}' is not defined under datasets "
                        f"(known: {sorted(datasets)})"
                    )
            for i, col in enumerate(spec.get("columns", [])):
                model = col.get("model")
                if model and model not in models:
                    raise InputError(
                        f"{where}.columns[{i}]: model '{model}' is not defined under models "
                        f"(models.{model} missing; known: {sorted(models)})"
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


def pretrain_config(config: dict, name: str):
    """The typed experiment `pretraining.<name>`, checked against the rest of the config:
    its sources must be configured corpora, its tokenizer a configured tokenizer."""
    from .pretrain_config import PretrainConfig

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
