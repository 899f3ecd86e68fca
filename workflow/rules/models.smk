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
