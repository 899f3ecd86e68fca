# BEIR data: download (md5-verified, mirrorable, resumable) -> unpack -> parquet.


rule download_beir:
    output:
        f"{WORK}/downloads/beir/{{dataset}}.zip",
    log:
        f"{WORK}/logs/download_beir/{{dataset}}.log",
    # Never repeated by Snakemake (not even with a profile's `retries`): the download
    # retries transient network errors itself, with backoff and resuming; a 404 or a
    # checksum mismatch fails the same way every time.
    retries: 0
    resources:
        **rule_resources("download"),
    params:
        py=PY,
        script=f"{SCRIPTS}/download_file.py",
        url=lambda wc: beir_url(wc.dataset),
        md5=lambda wc: beir_entry(wc.dataset).get("md5", ""),
    shell:
        # `--opt=` forms: an empty value stays an (empty) argument. MIRROR: common.smk.
        "{params.py:q} {params.script:q} --url={params.url:q} --md5={params.md5:q} "
        "--mirror={MIRROR:q} --out={output:q} 2> {log:q}"


rule unpack_beir:
    input:
        f"{WORK}/downloads/beir/{{dataset}}.zip",
    output:
        directory(f"{WORK}/raw/beir/{{dataset}}"),
    log:
        f"{WORK}/logs/unpack_beir/{{dataset}}.log",
    params:
        py=PY,
        script=f"{SCRIPTS}/unpack_beir.py",
    shell:
        "{params.py:q} {params.script:q} --zip {input:q} --out {output:q} 2> {log:q}"


rule convert_beir:
    input:
        unit_source_input,
    output:
        corpus=f"{WORK}/data/{{unit}}/corpus.parquet",
        queries=f"{WORK}/data/{{unit}}/queries.parquet",
        qrels=f"{WORK}/data/{{unit}}/qrels.parquet",
    log:
        f"{WORK}/logs/convert_beir/{{unit}}.log",
    resources:
        **{**rule_resources("convert"), "mem_mb": convert_mem_mb},
    params:
        py=PY,
        script=f"{SCRIPTS}/convert_beir.py",
        folder=unit_source_folder,
        split=lambda wc: UNITS[wc.unit].split,
        lenient=lambda wc: (
            ""
            if config["datasets"][UNITS[wc.unit].dataset].get("strict", True)
            else "--lenient"
        ),
    shell:
        "{params.py:q} {params.script:q} --folder {params.folder:q} --split {params.split:q} "
        "--corpus {output.corpus:q} --queries {output.queries:q} --qrels {output.qrels:q} "
        "{params.lenient} 2> {log:q}"
