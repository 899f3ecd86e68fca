# Scoring: per-unit metrics exactly as the beir package computes them, then the
# data-set level (CQADupStack = mean over its sub-forums). Code:
# lib/contriever_repro/evaluation/.


rule evaluate:
    input:
        run=lambda wc: run_path(wc.model, wc.unit),
        qrels=lambda wc: unit_tables(wc.unit)["qrels"],
    output:
        metrics=f"{WORK}/metrics/{{model}}/units/{{unit}}.parquet",
        per_query=f"{WORK}/metrics/{{model}}/units/{{unit}}.per_query.parquet",
    log:
        f"{WORK}/logs/evaluate/{{model}}/{{unit}}.log",
    params:
        py=PY,
        script=f"{SCRIPTS}/evaluate.py",
        k_values=" ".join(shlex.quote(str(k)) for k in config["evaluation"]["k_values"]),
        dataset=lambda wc: UNITS[wc.unit].dataset,
        split=lambda wc: UNITS[wc.unit].split,
        config_hash=lambda wc: plan.stable_hash(
            [
                config["models"][wc.model],
                config["datasets"][UNITS[wc.unit].dataset],
                config["evaluation"],
            ]
        ),
        identical=IDENTICAL_IDS,
    shell:
        "{params.py:q} {params.script:q} --run {input.run:q} --qrels {input.qrels:q} "
        "--model {wildcards.model:q} --dataset {params.dataset:q} --unit {wildcards.unit:q} "
        "--split {params.split:q} --k-values {params.k_values} {params.identical} "
        "--config-hash {params.config_hash:q} --out {output.metrics:q} "
        "--per-query {output.per_query:q} 2> {log:q}"


rule dataset_metrics:
    input:
        lambda wc: [
            f"{WORK}/metrics/{wc.model}/units/{u.name}.parquet"
            for u in DATASET_UNITS[wc.dataset]
        ],
    output:
        f"{WORK}/metrics/{{model}}/datasets/{{dataset}}.parquet",
    log:
        f"{WORK}/logs/dataset_metrics/{{model}}/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(DATASET_UNITS),
    params:
        py=PY,
        script=f"{SCRIPTS}/dataset_metrics.py",
    shell:
        "{params.py:q} {params.script:q} --dataset {wildcards.dataset:q} "
        "--units {input:q} --out {output:q} 2> {log:q}"


# Open-domain QA and MKQA: a question is answered at k when one of its top-k passages
# contains an answer (DPR's has_answer on the passage text); every retrieved passage's
# decision is kept beside the metrics. Code: lib/contriever_repro/evaluation/answers.py.
rule evaluate_qa:
    input:
        run=lambda wc: run_path(wc.model, wc.dataset),
        answers=lambda wc: unit_tables(wc.dataset)["answers"],
        corpus=lambda wc: unit_tables(wc.dataset)["corpus"],
    output:
        metrics=f"{WORK}/metrics/{{model}}/datasets/{{dataset}}.parquet",
        hits=f"{WORK}/metrics/{{model}}/qa/{{dataset}}.hits.parquet",
        per_query=f"{WORK}/metrics/{{model}}/qa/{{dataset}}.per_query.parquet",
    log:
        f"{WORK}/logs/evaluate_qa/{{model}}/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(QA_SETS),
    threads: res("evaluate_qa", "cpus_per_task", 1)
    resources:
        **rule_resources("evaluate_qa"),
    params:
        py=PY,
        script=f"{SCRIPTS}/evaluate_qa.py",
        k_values=" ".join(shlex.quote(str(k)) for k in QA["k_values"]),
        normalize=lambda wc: (
            "--normalize-answers" if QA_SETS[wc.dataset].normalize_answers else ""
        ),
        config_hash=lambda wc: plan.stable_hash(
            [config["models"][wc.model], plan.qa_source_config(config, wc.dataset), QA]
        ),
    shell:
        "{params.py:q} {params.script:q} --run {input.run:q} --answers {input.answers:q} "
        "--corpus {input.corpus:q} --model {wildcards.model:q} "
        "--dataset {wildcards.dataset:q} --k-values {params.k_values} {params.normalize} "
        "--config-hash {params.config_hash:q} --out {output.metrics:q} "
        "--hits {output.hits:q} --per-query {output.per_query:q} 2> {log:q}"
