# Data: BEIR (download, md5-verified, mirrorable, resumable -> unpack -> parquet), the
# pre-training corpora (download -> one document per line -> N line-aligned pieces) and
# the offline demo world. Code: lib/contriever_repro/data/.


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
    wildcard_constraints:
        unit=one_of(UNITS),
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


# ------------------------------------------------------ Mr. TyDi
# One release archive per language (mrtydi.url), downloaded through the project's one
# download path, unpacked into a BEIR folder as the authors' convertmrtydi2beir.py does
# (titles set to "", every split's topics, qrels per split); convert_beir and
# training_set then read it like any BEIR data set. Code: data/mrtydi.py.


rule download_mrtydi:
    output:
        f"{WORK}/downloads/mrtydi/{{filename}}",
    log:
        f"{WORK}/logs/download_mrtydi/{{filename}}.log",
    wildcard_constraints:
        filename=r"mrtydi-v1\.1-[a-z]+\.tar\.gz",
    retries: 0  # retries and resumes by itself, as download_beir
    resources:
        **rule_resources("download"),
    params:
        py=PY,
        script=f"{SCRIPTS}/download_file.py",
        url=lambda wc: plan.mrtydi_download(config, wc.filename)[0],
        md5=lambda wc: plan.mrtydi_download(config, wc.filename)[1],
    shell:
        "{params.py:q} {params.script:q} --url={params.url:q} --md5={params.md5:q} "
        "--mirror={MIRROR:q} --out={output:q} 2> {log:q}"


rule unpack_mrtydi:
    input:
        lambda wc: mrtydi_archive_input(wc.dataset),
    output:
        directory(f"{WORK}/raw/mrtydi/{{dataset}}"),
    log:
        f"{WORK}/logs/unpack_mrtydi/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(MRTYDI_SETS),
    resources:
        **rule_resources("convert"),
    params:
        py=PY,
        script=f"{SCRIPTS}/unpack_mrtydi.py",
        archive=lambda wc, input: mrtydi_archive_file(wc.dataset, input),
        language=lambda wc: config["datasets"][wc.dataset]["language"],
    shell:
        "{params.py:q} {params.script:q} --archive {params.archive:q} "
        "--language {params.language:q} --out {output:q} 2> {log:q}"


# ------------------------------------------------------ open-domain QA and MKQA inputs
# Passages (DPR's psgs_w100.tsv format), question sets with answers, MKQA; code:
# lib/contriever_repro/data/openqa.py and mkqa.py.


rule download_qa:
    output:
        f"{WORK}/downloads/qa/{{item}}/{{filename}}",
    log:
        f"{WORK}/logs/download_qa/{{item}}/{{filename}}.log",
    wildcard_constraints:
        item=one_of([*COLLECTIONS, *(config.get("qa_sets") or {}), "mkqa"]),
        filename=r"[^/]+",
    retries: 0  # retries and resumes by itself, as download_beir
    resources:
        **rule_resources("download"),
    params:
        py=PY,
        script=f"{SCRIPTS}/download_file.py",
        url=lambda wc: qa_source(wc.item)["url"],
        md5=lambda wc: qa_source(wc.item).get("md5") or "",
    shell:
        "{params.py:q} {params.script:q} --url={params.url:q} --md5={params.md5:q} "
        "--mirror={MIRROR:q} --out={output:q} 2> {log:q}"


rule convert_passages:
    input:
        lambda wc: qa_raw_input(wc.collection),
    output:
        f"{WORK}/data/{{collection}}/corpus.parquet",
    log:
        f"{WORK}/logs/convert_passages/{{collection}}.log",
    wildcard_constraints:
        collection=one_of(COLLECTIONS),
    resources:
        **rule_resources("convert_passages"),
    params:
        py=PY,
        script=f"{SCRIPTS}/qa_inputs.py",
        file=lambda wc, input: qa_raw_file(wc.collection, input),
    shell:
        "{params.py:q} {params.script:q} passages --input {params.file:q} "
        "--out {output:q} 2> {log:q}"


rule qa_questions:
    input:
        lambda wc: qa_raw_input(wc.qaset),
    output:
        queries=f"{WORK}/data/{{qaset}}/queries.parquet",
        answers=f"{WORK}/data/{{qaset}}/answers.parquet",
    log:
        f"{WORK}/logs/qa_questions/{{qaset}}.log",
    wildcard_constraints:
        qaset=one_of(config.get("qa_sets") or {}),
    params:
        py=PY,
        script=f"{SCRIPTS}/qa_inputs.py",
        file=lambda wc, input: qa_raw_file(wc.qaset, input),
        format=lambda wc: config["qa_sets"][wc.qaset].get("format", "auto"),
        expected=lambda wc: config["qa_sets"][wc.qaset].get("expected_questions") or 0,
        normalize=lambda wc: (
            "--normalize-answers" if QA_SETS[wc.qaset].normalize_answers else ""
        ),
    shell:
        "{params.py:q} {params.script:q} questions --input {params.file:q} "
        "--format {params.format:q} --expected {params.expected:q} {params.normalize} "
        "--queries {output.queries:q} --answers {output.answers:q} 2> {log:q}"


rule mkqa_questions:
    input:
        qa_raw_input("mkqa") if MKQA else [],
    output:
        queries=[f"{WORK}/data/{name}/queries.parquet" for name in MKQA_SETS],
        answers=[f"{WORK}/data/{name}/answers.parquet" for name in MKQA_SETS],
        counts=f"{WORK}/data/mkqa.counts.json",
    log:
        f"{WORK}/logs/mkqa_questions.log",
    params:
        py=PY,
        script=f"{SCRIPTS}/qa_inputs.py",
        file=lambda wc, input: qa_raw_file("mkqa", input) if MKQA else "",
        languages=json.dumps([QA_SETS[name].language for name in MKQA_SETS]),
        expected=MKQA.get("expected_per_language") or 0,
        out_dir=lambda wc, output: str(Path(output.counts).parent),
        prefix=MKQA.get("prefix", "mkqa-"),
        normalize="--normalize-answers" if MKQA.get("normalize_answers") else "",
    shell:
        "{params.py:q} {params.script:q} mkqa --input {params.file:q} "
        "--languages {params.languages:q} --expected {params.expected:q} "
        "--out-dir {params.out_dir:q} --prefix {params.prefix:q} {params.normalize} "
        "--counts {output.counts:q} 2> {log:q}"


# ------------------------------------------------------------ the offline demo world


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


# ------------------------------------------------------------ pre-training corpora


rule download_corpus:
    output:
        f"{WORK}/downloads/corpora/{{corpus}}/{{filename}}",
    log:
        f"{WORK}/logs/download_corpus/{{corpus}}/{{filename}}.log",
    wildcard_constraints:
        corpus=one_of(CORPORA),
        filename=r"[^/]+",
    # Never repeated by Snakemake (not even with a profile's `retries`): the download
    # retries transient network errors itself, with backoff and resuming; a 404 or a
    # checksum mismatch fails the same way every time.
    retries: 0
    resources:
        **rule_resources("download"),
    params:
        py=PY,
        script=f"{SCRIPTS}/download_file.py",
        url=lambda wc: corpus_urls(wc.corpus)[wc.filename],
        md5=lambda wc: (corpus_cfg(wc.corpus).get("md5s") or {}).get(wc.filename, ""),
        checksums=lambda wc: corpus_cfg(wc.corpus).get("checksums_url", ""),
    shell:
        # `--opt=` forms: an empty value stays an (empty) argument. MIRROR: common.smk.
        "{params.py:q} {params.script:q} --url={params.url:q} --md5={params.md5:q} "
        "--checksums-url={params.checksums:q} --mirror={MIRROR:q} --out={output:q} "
        "2> {log:q}"


rule prepare_corpus:
    input:
        unpack(lambda wc: corpus_raw(wc.corpus)),
    output:
        text=f"{WORK}/corpora/{{corpus}}/{{corpus}}.txt",
        stats=f"{WORK}/corpora/{{corpus}}/stats.json",
    log:
        f"{WORK}/logs/prepare_corpus/{{corpus}}.log",
    wildcard_constraints:
        corpus=one_of(CORPORA),
    threads: 8
    resources:
        **rule_resources("prepare_corpus"),
    params:
        py=PY,
        script=f"{SCRIPTS}/prepare_corpus.py",
        args=corpus_prepare_args,
    shell:
        "{params.py:q} {params.script:q} {params.args} --processes {threads:q} "
        "--out {output.text:q} --stats {output.stats:q} 2> {log:q}"


rule split_corpus:
    input:
        f"{WORK}/corpora/{{corpus}}/{{corpus}}.txt",
    output:
        directory(f"{WORK}/corpora/{{corpus}}/pieces"),
    log:
        f"{WORK}/logs/split_corpus/{{corpus}}.log",
    wildcard_constraints:
        corpus=one_of(CORPORA),
    resources:
        **rule_resources("split_corpus"),
    params:
        py=PY,
        script=f"{SCRIPTS}/split_corpus.py",
        pieces=lambda wc: corpus_cfg(wc.corpus).get("shards", 1),
    shell:
        "{params.py:q} {params.script:q} --input {input:q} --pieces {params.pieces:q} "
        "--out {output:q} 2> {log:q}"


# ------------------------------------------------------------ fine-tuning data


# A data set's training (or dev) split as training records: each query with its judged
# positives, checked against the collection the evaluation converted (a positive that
# is not a passage of it is an error naming the qrels line). Code: data/training_sets.py.
rule training_set:
    input:
        source=training_source_input,
        corpus=lambda wc: unit_tables(wc.dataset)["corpus"],
    output:
        queries=f"{WORK}/finetune/data/{{dataset}}/{{split}}/queries.parquet",
        records=f"{WORK}/finetune/data/{{dataset}}/{{split}}/records.parquet",
    log:
        f"{WORK}/logs/training_set/{{dataset}}.{{split}}.log",
    wildcard_constraints:
        split=r"[A-Za-z0-9_\-]+",
    resources:
        **rule_resources("convert"),
    params:
        py=PY,
        script=f"{SCRIPTS}/training_set.py",
        folder=lambda wc: dataset_folder(wc.dataset),
    shell:
        "{params.py:q} {params.script:q} --folder {params.folder:q} --split {wildcards.split:q} "
        "--corpus {input.corpus:q} --out-queries {output.queries:q} "
        "--out-records {output.records:q} 2> {log:q}"
