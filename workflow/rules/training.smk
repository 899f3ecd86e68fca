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
        corpus=one_of(CORPORA),
        tok=one_of(TOKENIZERS),
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
        name=one_of(PRETRAINING),
    # Retries resume after a pre-emption or time limit (exit 75). An error no retry can
    # fix is recorded in the run folder and ends later attempts at once; a changed
    # configuration is refused when the DAG is built (check_run_folder).
    retries: max([plan.pretrain_config(config, n).max_restarts for n in PRETRAINING] or [0])
    resources:
        # launch.job_resources: nodes, CPUs, gpu (one node) or mpi/tasks/slurm_extra
        # (several), partition, memory, time and whatever resources.pretrain adds.
        **{
            key: (lambda wc, key=key: pretrain_resources(wc.name).get(key))
            for key in PRETRAIN_RESOURCE_KEYS
        },
        attempt=lambda wc, attempt: attempt,
    params:
        launch=lambda wc, resources: pretrain_launch(wc.name, resources),
        script=f"{SCRIPTS}/pretrain.py",
        experiment=lambda wc: json.dumps(PRETRAINING[wc.name] or {}, sort_keys=True),
        init=lambda wc: pretrain_init(wc.name),
        sources=lambda wc: pretrain_sources(wc.name),
        run_dir=lambda wc: pretrain_run_dir(wc.name),
        time_limit=time_limit_arg,
        sdpa=SDPA_BACKENDS,
    shell:
        "{params.launch} {params.script:q} --name {wildcards.name:q} "
        "--experiment {params.experiment:q} --init {params.init:q} {params.sources} "
        "--run-dir {params.run_dir:q} --export {output:q} --attempt {resources.attempt:q} "
        "--sdpa-backends {params.sdpa:q} {params.time_limit} 2> {log:q}"


# Supervised fine-tuning (paper A.2, A.3, B.2): the same engine and run-folder discipline
# as pre-training (resume, exit 75 on pre-emption, failed.json), on the training records
# of one data set or several (Mr. TyDi's 11 languages); phase 2 adds the negatives mined
# by its phase-1 model on each data set (rule mine_negatives). A cross-encoder
# (objective: cross_encoder) trains with the same engine.
# Code: lib/contriever_repro/training/finetune.py.
rule finetune:
    input:
        unpack(lambda wc: finetune_inputs(wc.name)),
    output:
        directory(f"{WORK}/models/{{name}}"),
    log:
        f"{WORK}/logs/finetune/{{name}}.log",
    wildcard_constraints:
        name=one_of(FINETUNING),
    retries: max([finetune_experiment(n).max_restarts for n in FINETUNING] or [0])
    resources:
        **{
            key: (lambda wc, key=key: finetune_resources(wc.name).get(key))
            for key in FINETUNE_RESOURCE_KEYS
        },
        attempt=lambda wc, attempt: attempt,
    params:
        launch=lambda wc, resources: finetune_launch(wc.name, resources),
        script=f"{SCRIPTS}/finetune.py",
        experiment=lambda wc: json.dumps(FINETUNING[wc.name] or {}, sort_keys=True),
        init=lambda wc: model_source_folder(finetune_experiment(wc.name).init),
        run_dir=lambda wc: f"{WORK}/finetune/runs/{wc.name}",
        args=finetune_args,
        time_limit=time_limit_arg,
        sdpa=SDPA_BACKENDS,
    shell:
        "{params.launch} {params.script:q} --name {wildcards.name:q} "
        "--experiment {params.experiment:q} --init {params.init:q} "
        "{params.args} --run-dir {params.run_dir:q} --export {output:q} "
        "--attempt {resources.attempt:q} --sdpa-backends {params.sdpa:q} "
        "{params.time_limit} 2> {log:q}"
