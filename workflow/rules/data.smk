# BEIR data: download (md5-verified, mirrorable, resumable) -> unpack -> parquet.


def beir_entry(dataset):
    return BEIR_CATALOG["datasets"][config["datasets"][dataset].get("catalog", dataset)]


def beir_url(dataset):
    entry = beir_entry(dataset)
    catalog_name = config["datasets"][dataset].get("catalog", dataset)
    return entry.get("url", f"{BEIR_CATALOG['base_url']}/{catalog_name}.zip")


def unit_source_folder(wildcards):
    """The BEIR-format folder a unit is converted from (sub-forum folder for groups)."""
    u = UNITS[wildcards.unit]
    if u.source == "local":
        base = u.path
    elif u.source == "demo":
        base = f"{WORK}/raw/demo/{u.dataset}"
    else:
        base = f"{WORK}/raw/beir/{u.dataset}"
    return f"{base}/{u.subset}" if u.subset else base


def unit_source_input(wildcards):
    u = UNITS[wildcards.unit]
    if u.source == "local":
        return []  # a folder outside the workflow: read in place, never copied
    if u.source == "demo":
        return f"{WORK}/raw/demo"
    return f"{WORK}/raw/beir/{u.dataset}"


rule download_beir:
    output:
        f"{WORK}/downloads/beir/{{dataset}}.zip",
    params:
        url=lambda wc: beir_url(wc.dataset),
        md5=lambda wc: beir_entry(wc.dataset).get("md5", ""),
        mirror=lambda wc: f"--mirror {config['mirror']}" if config.get("mirror") else "",
    log:
        f"{WORK}/logs/download_beir/{{dataset}}.log",
    resources:
        **rule_resources("download"),
    shell:
        "{PY} {SCRIPTS}/download_file.py --url {params.url:q} --md5 {params.md5:q} "
        "{params.mirror} --out {output:q} 2> {log:q}"


rule unpack_beir:
    input:
        f"{WORK}/downloads/beir/{{dataset}}.zip",
    output:
        directory(f"{WORK}/raw/beir/{{dataset}}"),
    log:
        f"{WORK}/logs/unpack_beir/{{dataset}}.log",
    shell:
        "{PY} {SCRIPTS}/unpack_beir.py --zip {input:q} --out {output:q} 2> {log:q}"


rule convert_beir:
    input:
        unit_source_input,
    output:
        corpus=f"{WORK}/data/{{unit}}/corpus.parquet",
        queries=f"{WORK}/data/{{unit}}/queries.parquet",
        qrels=f"{WORK}/data/{{unit}}/qrels.parquet",
    params:
        folder=unit_source_folder,
        split=lambda wc: UNITS[wc.unit].split,
        lenient=lambda wc: (
            "" if config["datasets"][UNITS[wc.unit].dataset].get("strict", True) else "--lenient"
        ),
    log:
        f"{WORK}/logs/convert_beir/{{unit}}.log",
    resources:
        **rule_resources("convert"),
    shell:
        "{PY} {SCRIPTS}/convert_beir.py --folder {params.folder:q} --split {params.split} "
        "--corpus {output.corpus:q} --queries {output.queries:q} --qrels {output.qrels:q} "
        "{params.lenient} 2> {log:q}"
