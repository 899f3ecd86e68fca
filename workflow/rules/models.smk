# Models built by the workflow itself (the demo's tiny BERT; later, trained runs).


rule build_tiny_bert:
    input:
        f"{WORK}/raw/demo",
    output:
        directory(f"{WORK}/models/{{name}}"),
    wildcard_constraints:
        name="|".join(config.get("tiny_berts", {})) or "^$",
    params:
        spec=lambda wc: json.dumps(config["tiny_berts"][wc.name], sort_keys=True),
    log:
        f"{WORK}/logs/build_tiny_bert/{{name}}.log",
    shell:
        "{PY} {SCRIPTS}/build_tiny_bert.py --spec {params.spec:q} --demo-root {input:q} "
        "--out {output:q} 2> {log:q}"
