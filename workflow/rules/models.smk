# Models: hub snapshots prefetched on the submit host, the demo's tiny BERT, model cards.
# Code: lib/contriever_repro/models/.


rule build_tiny_bert:
    input:
        f"{WORK}/raw/demo",
    output:
        directory(f"{WORK}/models/{{name}}"),
    log:
        f"{WORK}/logs/build_tiny_bert/{{name}}.log",
    wildcard_constraints:
        name=one_of(config.get("tiny_berts") or {}),
    params:
        py=PY,
        script=f"{SCRIPTS}/build_tiny_bert.py",
        spec=lambda wc: json.dumps(config["tiny_berts"][wc.name], sort_keys=True),
    shell:
        "{params.py:q} {params.script:q} --spec {params.spec:q} --demo-root {input:q} "
        "--out {output:q} 2> {log:q}"


# Hub models (dense models, tokenizers, pre-training inits) are fetched on the submit
# host (a localrule: compute nodes may have no internet), once per repository, at the
# commit pinned by `revision`; cluster jobs then load the folder offline. The revision
# is a param, so changing it fetches again and reruns what used the old snapshot.
rule prefetch_model:
    output:
        directory(f"{WORK}/models/hub/{{repo}}"),
    log:
        f"{WORK}/logs/prefetch_model/{{repo}}.log",
    wildcard_constraints:
        repo=one_of(HUB),
    params:
        py=PY,
        script=f"{SCRIPTS}/prefetch_model.py",
        repo_id=lambda wc: HUB[wc.repo].repo_id,
        revision=lambda wc: HUB[wc.repo].revision or "",
        users=lambda wc: list(HUB[wc.repo].users),
    shell:
        "{params.py:q} {params.script:q} --repo-id {params.repo_id:q} "
        "--revision={params.revision:q} --users {params.users:q} --out {output:q} 2> {log:q}"


# The card of a pre-trained model with the numbers this workflow measured for it (the
# export writes the card without them: evaluation comes later). Written beside the
# results, not into the model folder, so the encodings made from it stay up to date;
# copy it over models/{name}/README.md before publishing the folder.
rule model_card:
    input:
        model=f"{WORK}/models/{{name}}",
        metrics=lambda wc: [
            dataset_metrics(m, d) for m, d in plan.model_card_cells(config, wc.name)
        ],
    output:
        f"{RESULTS}/model_cards/{{name}}.md",
    log:
        f"{WORK}/logs/model_card/{{name}}.log",
    wildcard_constraints:
        name=one_of(PRETRAINING),
    params:
        py=PY,
        script=f"{SCRIPTS}/model_card.py",
    shell:
        "{params.py:q} {params.script:q} --model-dir {input.model:q} "
        "--metrics {input.metrics:q} --out {output:q} 2> {log:q}"
