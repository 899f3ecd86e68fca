# Contriever reproduction: from corpora and checkpoints to the paper's tables.
# Default config is the paper (config/config.yaml); `--configfile config/demo.yaml`
# runs the offline demo instead: a config file given on the command line replaces the
# paper config rather than being merged into it (`--config key=value` still overrides).
# An overlay that starts with `extends: config/config.yaml` adds to that config instead
# (config/examples/own_model.yaml).

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")
sys.path.insert(0, str(Path(workflow.basedir) / "lib"))

from contriever_repro import plan  # noqa: E402

if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


_resolved = plan.resolve_extends(config, workflow.basedir)
config.clear()
config.update(_resolved)
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/reporting.smk"


# Run by Snakemake itself on the submit host, never submitted: downloads and hub
# prefetches (compute nodes may have no internet) and jobs of seconds (unpacking,
# scoring, merging, tables, figures, the demo world), which would wait in the queue
# far longer than they run. Heavy jobs (conversion, encoding, search, BM25,
# tokenisation, training) are submitted with the resources in config `resources:`.
localrules:
    download_beir,
    download_corpus,
    download_qa,
    download_mrtydi,
    merge_rerank,
    qa_questions,
    mkqa_questions,
    prefetch_model,
    unpack_beir,
    evaluate,
    dataset_metrics,
    table,
    figure,
    demo_world,
    build_tiny_bert,
    model_card,


rule all:
    default_target: True
    input:
        all_targets(),
