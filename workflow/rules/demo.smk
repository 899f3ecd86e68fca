# The offline demo world: synthetic BEIR-format data sets generated from a seed.


rule demo_world:
    output:
        directory(f"{WORK}/raw/demo"),
    params:
        spec=lambda wc: json.dumps(config.get("demo_world", {}), sort_keys=True),
    log:
        f"{WORK}/logs/demo_world.log",
    shell:
        "{PY} {SCRIPTS}/demo_world.py --spec {params.spec:q} --out {output:q} 2> {log:q}"
