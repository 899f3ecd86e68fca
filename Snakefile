# Contriever reproduction: from corpora and checkpoints to the paper's tables.
# Default config is the paper (config/config.yaml); `--configfile config/demo.yaml`
# runs the offline demo instead (it replaces the paper config rather than merging).

from snakemake.utils import min_version, validate

min_version("9.0")


if not config:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/retrieve.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        all_targets(),
    default_target: True
