# Contriever reproduction: from corpora and checkpoints to the paper's tables.
# Default config is the paper (config/config.yaml); `--configfile config/demo.yaml`
# runs the offline demo instead: a config file given on the command line replaces the
# paper config rather than being merged into it (`--config key=value` still overrides).

from snakemake.utils import min_version, validate

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/retrieve.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        all_targets(),
