# Contrastive training: token shards (one job per corpus piece) -> training (one job,
# torchrun inside) -> HF folder models/{name}. Code: lib/contriever_repro/training/.
# The run folder {WORK}/pretrain/{name} (checkpoints, metrics, logs, the kept export) is
# not a rule output, so Snakemake never deletes it when a job fails: a retry resumes.


rule tokenize_piece:
    input:
        pieces=f"{WORK}/corpora/{{corpus}}/pieces",
        tokenizer=lambda wc: tokenizer_input(wc.tok),
    output:
        meta=f"{WORK}/tokens/{{tok}}/{{corpus}}/{{corpus}}.{{piece}}.json",
        tokens=f"{WORK}/tokens/{{tok}}/{{corpus}}/{{corpus}}.{{piece}}.tokens.npy",
        offsets=f"{WORK}/tokens/{{tok}}/{{corpus}}/{{corpus}}.{{piece}}.offsets.npy",
    log:
        f"{WORK}/logs/tokenize/{{tok}}/{{corpus}}.{{piece}}.log",
    wildcard_constraints:
        corpus="|".join(map(re.escape, CORPORA)) or "^$",
        tok="|".join(map(re.escape, TOKENIZERS)) or "^$",
        piece=r"\d\d\d+",
    resources:
        **rule_resources("tokenize"),
    params:
        py=PY,
        script=f"{SCRIPTS}/tokenize_corpus.py",
        text=lambda wc, input: f"{input.pieces}/{wc.corpus}.{wc.piece}.txt",
        tokenizer=lambda wc: tokenizer_source(wc.tok),
        prefix=lambda wc: f"{WORK}/tokens/{wc.tok}/{wc.corpus}/{wc.corpus}.{wc.piece}",
        normalize=lambda wc: (
            "--normalize" if TOKENIZERS[wc.tok].get("normalize_text") else ""
        ),
    shell:
        "{params.py:q} {params.script:q} --text {params.text:q} --tokenizer {params.tokenizer:q} "
        "--out-prefix {params.prefix:q} {params.normalize} 2> {log:q}"


rule pretrain:
    input:
        lambda wc: pretrain_inputs(wc.name),
    output:
        directory(f"{WORK}/models/{{name}}"),
    log:
        # This attempt's stderr (Snakemake deletes it before each attempt); every
        # attempt's log is appended to {WORK}/pretrain/{name}/logs/train.log.
        f"{WORK}/logs/pretrain/{{name}}.log",
    wildcard_constraints:
        name="|".join(map(re.escape, PRETRAINING)) or "^$",
    # Retries resume after a pre-emption or time limit (exit 75). An error no retry can
    # fix is recorded in the run folder and ends later attempts at once; a changed
    # configuration is refused when the DAG is built (check_run_folder).
    retries: max([plan.pretrain_config(config, n).max_restarts for n in PRETRAINING] or [0])
    resources:
        **slurm_placement(gpu=True),
        # nodes, cpus_per_task, gpu (one node) or mpi/tasks/slurm_extra (several):
        # launch.slurm_resources; None leaves a resource out.
        nodes=lambda wc: pretrain_resources(wc.name)["nodes"],
        gpu=lambda wc: pretrain_resources(wc.name).get("gpu"),
        mpi=lambda wc: pretrain_resources(wc.name).get("mpi"),
        tasks=lambda wc: pretrain_resources(wc.name).get("tasks"),
        slurm_extra=lambda wc: pretrain_resources(wc.name).get("slurm_extra"),
        cpus_per_task=lambda wc: pretrain_resources(wc.name)["cpus_per_task"],
        mem_mb=lambda wc: pretrain_resources(wc.name).get("mem_mb", 16000),
        runtime=lambda wc: pretrain_resources(wc.name).get("runtime", 60),
        attempt=lambda wc, attempt: attempt,
    params:
        launch=lambda wc, resources: pretrain_launch(wc.name, resources),
        script=f"{SCRIPTS}/pretrain.py",
        experiment=lambda wc: json.dumps(PRETRAINING[wc.name] or {}, sort_keys=True),
        init=lambda wc: pretrain_init(wc.name),
        sources=lambda wc: pretrain_sources(wc.name),
        run_dir=lambda wc: pretrain_run_dir(wc.name),
        time_limit=time_limit_arg,
    shell:
        "{params.launch} {params.script:q} --name {wildcards.name:q} "
        "--experiment {params.experiment:q} --init {params.init:q} {params.sources} "
        "--run-dir {params.run_dir:q} --export {output:q} --attempt {resources.attempt:q} "
        "{params.time_limit} 2> {log:q}"
