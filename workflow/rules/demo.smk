# The offline demo world: synthetic BEIR-format data sets generated from a seed.


rule demo_world:
    output:
        directory(f"{WORK}/raw/demo"),
    log:
        f"{WORK}/logs/demo_world.log",
    params:
        py=PY,
        script=f"{SCRIPTS}/demo_world.py",
        spec=lambda wc: json.dumps(config.get("demo_world", {}), sort_keys=True),
    shell:
        "{params.py:q} {params.script:q} --spec {params.spec:q} --out {output:q} 2> {log:q}"
