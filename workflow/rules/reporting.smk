# Paper-shaped tables and figures from the data-set level metrics and the paper's
# quoted numbers (config.paper_results). Code: lib/contriever_repro/reporting/.


rule table:
    input:
        metrics=lambda wc: table_inputs("tables", wc.table),
        paper=config["paper_results"],
    output:
        csv=report(
            f"{RESULTS}/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
        ),
        parquet=f"{RESULTS}/{{table}}.parquet",
        md=f"{RESULTS}/{{table}}.md",
    log:
        f"{WORK}/logs/table/{{table}}.log",
    params:
        py=PY,
        script=f"{SCRIPTS}/make_table.py",
        spec=lambda wc: json.dumps(
            plan.report_spec(config, "tables", wc.table), sort_keys=True
        ),
        label=config.get("label", ""),
    shell:
        "{params.py:q} {params.script:q} --name {wildcards.table:q} --spec {params.spec:q} "
        "--paper {input.paper:q} --label {params.label:q} --metrics {input.metrics:q} "
        "--csv {output.csv:q} --parquet {output.parquet:q} --md {output.md:q} 2> {log:q}"


rule figure:
    input:
        metrics=lambda wc: table_inputs("figures", wc.figure),
        paper=config["paper_results"],
    output:
        png=report(
            f"{RESULTS}/{{figure}}.png",
            caption="../report/figure.rst",
            category="Figures",
        ),
        csv=f"{RESULTS}/{{figure}}.csv",
    log:
        f"{WORK}/logs/figure/{{figure}}.log",
    params:
        py=PY,
        script=f"{SCRIPTS}/make_figure.py",
        spec=lambda wc: json.dumps(config["figures"][wc.figure], sort_keys=True),
        label=config.get("label", ""),
    shell:
        "{params.py:q} {params.script:q} --name {wildcards.figure:q} --spec {params.spec:q} "
        "--paper {input.paper:q} --label {params.label:q} --metrics {input.metrics:q} "
        "--out {output.png:q} --csv {output.csv:q} 2> {log:q}"
