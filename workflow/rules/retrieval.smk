# Retrieval: encode corpus shards and queries, exact FAISS search; BM25 baseline.
# Code: lib/contriever_repro/retrieval/.


rule encode_corpus:
    input:
        corpus=lambda wc: unit_tables(wc.unit)["corpus"],
        model=lambda wc: model_folder(wc.model),
    output:
        emb=f"{WORK}/embeddings/{{model}}/{{unit}}/corpus.{{shard}}-of-{{n}}.npy",
        ids=f"{WORK}/embeddings/{{model}}/{{unit}}/corpus.{{shard}}-of-{{n}}.ids.parquet",
        meta=f"{WORK}/embeddings/{{model}}/{{unit}}/corpus.{{shard}}-of-{{n}}.json",
    log:
        f"{WORK}/logs/encode_corpus/{{model}}/{{unit}}.{{shard}}-of-{{n}}.log",
    threads: res("encode_corpus", "cpus_per_task", 1)
    resources:
        **rule_resources("encode_corpus"),
    params:
        py=PY,
        script=f"{SCRIPTS}/encode.py",
        spec=lambda wc: model_spec_json(wc.model),
        source=lambda wc: source_arg(wc.model),
        prefix=lambda wc, output: output.emb[: -len(".npy")],
        resume=lambda wc, output: output.emb[: -len(".npy")] + ".partial",
        device=DEVICE,
        gpus=lambda wc, resources: resources.get("gpu", 0),
        sdpa=SDPA_BACKENDS,
    shell:
        "{params.py:q} {params.script:q} corpus --spec {params.spec:q} {params.source} "
        "--input {input.corpus:q} --shard {wildcards.shard:q} --num-shards {wildcards.n:q} "
        "--out-prefix {params.prefix:q} --resume-dir {params.resume:q} "
        "--device {params.device:q} --gpus {params.gpus:q} --threads {threads:q} "
        "--sdpa-backends {params.sdpa:q} 2> {log:q}"


rule encode_queries:
    input:
        queries=lambda wc: unit_tables(wc.unit)["queries"],
        model=lambda wc: model_folder(wc.model),
    output:
        emb=f"{WORK}/embeddings/{{model}}/{{unit}}/queries.npy",
        ids=f"{WORK}/embeddings/{{model}}/{{unit}}/queries.ids.parquet",
        meta=f"{WORK}/embeddings/{{model}}/{{unit}}/queries.json",
    log:
        f"{WORK}/logs/encode_queries/{{model}}/{{unit}}.log",
    threads: res("encode_queries", "cpus_per_task", 1)
    resources:
        **rule_resources("encode_queries"),
    params:
        py=PY,
        script=f"{SCRIPTS}/encode.py",
        spec=lambda wc: model_spec_json(wc.model),
        source=lambda wc: source_arg(wc.model),
        prefix=lambda wc, output: output.emb[: -len(".npy")],
        device=DEVICE,
        gpus=lambda wc, resources: resources.get("gpu", 0),
        sdpa=SDPA_BACKENDS,
    shell:
        "{params.py:q} {params.script:q} queries --spec {params.spec:q} {params.source} "
        "--input {input.queries:q} --out-prefix {params.prefix:q} "
        "--device {params.device:q} --gpus {params.gpus:q} --threads {threads:q} "
        "--sdpa-backends {params.sdpa:q} 2> {log:q}"


rule search:
    input:
        queries=f"{WORK}/embeddings/{{model}}/{{unit}}/queries.npy",
        shards=search_inputs,
    output:
        run=f"{WORK}/runs/dense/{{model}}/{{unit}}.parquet",
        trec=f"{WORK}/runs/dense/{{model}}/{{unit}}.trec",
    log:
        f"{WORK}/logs/search/{{model}}/{{unit}}.log",
    threads: res("search", "cpus_per_task", 1)
    resources:
        **rule_resources("search"),
    params:
        py=PY,
        script=f"{SCRIPTS}/search.py",
        top_k=search_top_k,
        identical=search_identical,
        # the embedding shards (exact), or the approximate index of a question set
        shard_args=search_corpus_args,
        queries=lambda wc, input: input.queries[: -len(".npy")],
        device=DEVICE,
        gpus=lambda wc, resources: resources.get("gpu", 0),
    shell:
        "{params.py:q} {params.script:q} --queries {params.queries:q} {params.shard_args} "
        "--top-k {params.top_k:q} {params.identical} --tag {wildcards.model:q} "
        "--run {output.run:q} --trec {output.trec:q} --device {params.device:q} "
        "--gpus {params.gpus:q} --threads {threads:q} 2> {log:q}"


# An approximate FAISS index of a passage collection (config qa.index): trained on a
# sample, built once per model and searched by every question set of the collection,
# its best candidates re-scored exactly from the shards. Its recall against the exact
# search: rule index_recall. Code: lib/contriever_repro/retrieval/index.py.
rule build_index:
    input:
        shards=lambda wc: corpus_shards(wc.model, wc.collection),
    output:
        index=f"{WORK}/indexes/{{model}}/{{collection}}.faiss",
        ids=f"{WORK}/indexes/{{model}}/{{collection}}.ids.parquet",
        meta=f"{WORK}/indexes/{{model}}/{{collection}}.json",
    log:
        f"{WORK}/logs/build_index/{{model}}/{{collection}}.log",
    wildcard_constraints:
        collection=one_of(COLLECTIONS),
    threads: res("build_index", "cpus_per_task", 1)
    resources:
        **rule_resources("build_index"),
    params:
        py=PY,
        script=f"{SCRIPTS}/build_index.py",
        shard_args=lambda wc, input: " ".join(
            f"--shard {shlex.quote(s[: -len('.npy')])}" for s in input.shards
        ),
        factory=lambda wc: QA["index"].get("factory", "auto"),
        train_size=lambda wc: QA["index"].get("train_size", 1000000),
        seed=lambda wc: QA["index"].get("seed", 0),
        prefix=lambda wc, output: output.index[: -len(".faiss")],
        device=DEVICE,
        gpus=lambda wc, resources: resources.get("gpu", 0),
    shell:
        "{params.py:q} {params.script:q} {params.shard_args} --factory {params.factory:q} "
        "--train-size {params.train_size:q} --seed {params.seed:q} "
        "--out-prefix {params.prefix:q} --device {params.device:q} --gpus {params.gpus:q} "
        "--threads {threads:q} 2> {log:q}"


# What the approximate index loses: an exact search of the same questions over the
# shards, and the share of its top k the index's run found (a report, built on request:
# results/index_recall/<model>/<question set>.json).
rule index_recall:
    input:
        approx=f"{WORK}/runs/dense/{{model}}/{{unit}}.parquet",
        queries=f"{WORK}/embeddings/{{model}}/{{unit}}/queries.npy",
        shards=lambda wc: corpus_shards(wc.model, wc.unit),
    output:
        exact=f"{WORK}/runs/dense-exact/{{model}}/{{unit}}.parquet",
        trec=f"{WORK}/runs/dense-exact/{{model}}/{{unit}}.trec",
        report=f"{RESULTS}/index_recall/{{model}}/{{unit}}.json",
    log:
        f"{WORK}/logs/index_recall/{{model}}/{{unit}}.log",
    wildcard_constraints:
        unit=one_of(QA_SETS),
    threads: res("search", "cpus_per_task", 1)
    resources:
        **rule_resources("search"),
    params:
        py=PY,
        search=f"{SCRIPTS}/search.py",
        script=f"{SCRIPTS}/index_recall.py",
        top_k=search_top_k,
        shard_args=lambda wc, input: search_corpus_args(wc, input, exact=True),
        queries=lambda wc, input: input.queries[: -len(".npy")],
        device=DEVICE,
        gpus=lambda wc, resources: resources.get("gpu", 0),
    shell:
        "{params.py:q} {params.search:q} --queries {params.queries:q} {params.shard_args} "
        "--top-k {params.top_k:q} --keep-identical-ids --tag exact "
        "--run {output.exact:q} --trec {output.trec:q} --device {params.device:q} "
        "--gpus {params.gpus:q} --threads {threads:q} 2> {log:q} && "
        "{params.py:q} {params.script:q} --approx {input.approx:q} --exact {output.exact:q} "
        "--k {params.top_k:q} --out {output.report:q} 2>> {log:q}"


rule bm25:
    input:
        corpus=lambda wc: unit_tables(wc.unit)["corpus"],
        queries=lambda wc: unit_tables(wc.unit)["queries"],
    output:
        run=f"{WORK}/runs/bm25/{{model}}/{{unit}}.parquet",
        trec=f"{WORK}/runs/bm25/{{model}}/{{unit}}.trec",
    log:
        f"{WORK}/logs/bm25/{{model}}/{{unit}}.log",
    threads: res("bm25", "cpus_per_task", 1)
    resources:
        **rule_resources("bm25"),
    params:
        py=PY,
        script=f"{SCRIPTS}/bm25.py",
        spec=lambda wc: json.dumps(model_cfg(wc.model), sort_keys=True),
        top_k=config["evaluation"]["top_k"],
        identical=IDENTICAL_IDS,
    shell:
        "{params.py:q} {params.script:q} --spec {params.spec:q} --corpus {input.corpus:q} "
        "--queries {input.queries:q} --top-k {params.top_k:q} {params.identical} "
        "--tag {wildcards.model:q} --run {output.run:q} --trec {output.trec:q} "
        "--threads {threads:q} 2> {log:q}"


# Hard negatives for a phase-2 fine-tuning: the phase-1 model's embeddings of the
# collection (encode_corpus shards), its encoding of the training queries, exact
# search, judged positives dropped, ranks kept as configured; plus a mining report.
# Code: lib/contriever_repro/retrieval/mining.py.
rule mine_negatives:
    input:
        unpack(lambda wc: mining_inputs(wc.name, wc.dataset)),
    output:
        mined=f"{WORK}/finetune/mined/{{name}}/{{dataset}}.parquet",
        report=f"{RESULTS}/mining/{{name}}/{{dataset}}.md",
        plot=f"{RESULTS}/mining/{{name}}/{{dataset}}.png",
    log:
        f"{WORK}/logs/mine_negatives/{{name}}/{{dataset}}.log",
    wildcard_constraints:
        name=one_of(sorted({n for n, _ in MINED})),
        dataset=one_of(sorted({d for _, d in MINED})),
    threads: res("search", "cpus_per_task", 1)
    resources:
        **rule_resources("search"),
    params:
        py=PY,
        script=f"{SCRIPTS}/mine_negatives.py",
        spec=lambda wc: model_spec_json(
            plan.mining_model(config, wc.name, finetune_experiment(wc.name).mined_by)
        ),
        shard_args=lambda wc, input: " ".join(
            f"--shard {shlex.quote(s[: -len('.npy')])}" for s in input.shards
        ),
        depth=lambda wc: finetune_experiment(wc.name).mining_depth,
        rank_min=lambda wc: finetune_experiment(wc.name).mining_rank_min,
        rank_max=lambda wc: finetune_experiment(wc.name).mining_rank_max,
        # --per-query only when set (unset: every hit in the rank range)
        args=lambda wc: (
            f"--per-query {shlex.quote(str(n))}"
            if (n := finetune_experiment(wc.name).mining_per_query)
            else ""
        ),
        seed=lambda wc: finetune_experiment(wc.name).seed,
        device=DEVICE,
        gpus=lambda wc, resources: resources.get("gpu", 0),
        sdpa=SDPA_BACKENDS,
        search_backend=SEARCH_BACKEND,
    shell:
        "{params.py:q} {params.script:q} --spec {params.spec:q} --source {input.model:q} "
        "--queries {input.queries:q} --records {input.records:q} {params.shard_args} "
        "--corpus {input.corpus:q} --depth {params.depth:q} --rank-min {params.rank_min:q} "
        "--rank-max {params.rank_max:q} {params.args} "
        "--seed {params.seed:q} --device {params.device:q} --gpus {params.gpus:q} "
        "--threads {threads:q} --sdpa-backends {params.sdpa:q} "
        "--search-backend {params.search_backend:q} --out {output.mined:q} "
        "--report {output.report:q} "
        "--plot {output.plot:q} 2> {log:q}"


# Cross-encoder re-ranking (Table 2's "Ours+CE"): the first stage's top `depth` hits of
# each query re-scored by the cross-encoder and ordered by it, the hits below `depth`
# kept in their order beneath them; one job per query shard, then merged. Code:
# lib/contriever_repro/retrieval/rerank.py.
rule rerank:
    input:
        run=lambda wc: run_path(rerank_cfg(wc.model)["first_stage"], wc.unit),
        queries=lambda wc: unit_tables(wc.unit)["queries"],
        corpus=lambda wc: unit_tables(wc.unit)["corpus"],
        cross_encoder=lambda wc: cross_encoder_input(wc.model),
    output:
        run=f"{WORK}/runs/rerank/{{model}}/{{unit}}.{{shard}}-of-{{n}}.parquet",
    log:
        f"{WORK}/logs/rerank/{{model}}/{{unit}}.{{shard}}-of-{{n}}.log",
    wildcard_constraints:
        model=one_of(RERANK_MODELS),
        unit=one_of(UNITS),
    threads: res("rerank", "cpus_per_task", 1)
    resources:
        **rule_resources("rerank"),
    params:
        py=PY,
        script=f"{SCRIPTS}/rerank.py",
        cross_encoder=lambda wc: cross_encoder_path(wc.model),
        depth=lambda wc: rerank_cfg(wc.model)["depth"],
        batch_size=lambda wc: rerank_cfg(wc.model)["cross_encoder_config"]["batch_size"],
        max_length=lambda wc: rerank_cfg(wc.model)["cross_encoder_config"]["max_length"],
        dtype=lambda wc: rerank_cfg(wc.model)["cross_encoder_config"]["dtype"],
        args=rerank_args,
        device=DEVICE,
        sdpa=SDPA_BACKENDS,
        gpus=lambda wc, resources: resources.get("gpu", 0),
    shell:
        "{params.py:q} {params.script:q} score --run {input.run:q} --queries {input.queries:q} "
        "--corpus {input.corpus:q} --cross-encoder {params.cross_encoder:q} {params.args} "
        "--depth {params.depth:q} --shard {wildcards.shard:q} --num-shards {wildcards.n:q} "
        "--batch-size {params.batch_size:q} --max-length {params.max_length:q} "
        "--dtype {params.dtype:q} --device {params.device:q} --gpus {params.gpus:q} "
        "--threads {threads:q} --sdpa-backends {params.sdpa:q} --out {output.run:q} 2> {log:q}"


rule merge_rerank:
    input:
        shards=lambda wc: rerank_shard_runs(wc.model, wc.unit),
        first_stage=lambda wc: run_path(rerank_cfg(wc.model)["first_stage"], wc.unit),
    output:
        run=f"{WORK}/runs/rerank/{{model}}/{{unit}}.parquet",
        trec=f"{WORK}/runs/rerank/{{model}}/{{unit}}.trec",
    log:
        f"{WORK}/logs/merge_rerank/{{model}}/{{unit}}.log",
    wildcard_constraints:
        model=one_of(RERANK_MODELS),
        unit=one_of(UNITS),
    params:
        py=PY,
        script=f"{SCRIPTS}/rerank.py",
    shell:
        "{params.py:q} {params.script:q} merge --run-shards {input.shards:q} "
        "--first-stage {input.first_stage:q} --tag {wildcards.model:q} "
        "--out {output.run:q} --trec {output.trec:q} 2> {log:q}"
