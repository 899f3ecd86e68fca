# Models built by the workflow itself (the demo's tiny BERT; later, trained runs).


rule build_tiny_bert:
    input:
        f"{WORK}/raw/demo",
    output:
        directory(f"{WORK}/models/{{name}}"),
    log:
        f"{WORK}/logs/build_tiny_bert/{{name}}.log",
    wildcard_constraints:
        name="|".join(config.get("tiny_berts", {})) or "^$",
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
        repo="|".join(map(re.escape, HUB)) or "^$",
    params:
        py=PY,
        script=f"{SCRIPTS}/prefetch_model.py",
        repo_id=lambda wc: HUB[wc.repo].repo_id,
        revision=lambda wc: HUB[wc.repo].revision or "",
        users=lambda wc: list(HUB[wc.repo].users),
    shell:
        "{params.py:q} {params.script:q} --repo-id {params.repo_id:q} "
        "--revision={params.revision:q} --users {params.users:q} --out {output:q} 2> {log:q}"
