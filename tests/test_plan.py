import copy
from pathlib import Path

import pytest
import yaml

from contriever_repro.errors import InputError
from contriever_repro.plan import (
    check_references,
    check_reports,
    dataset_units,
    finetune_config,
    hub_sources,
    known_metrics,
    local_unit_files,
    mining_model,
    model_card_cells,
    model_kind,
    rerank_config,
    stable_hash,
    table_cells,
    workflow_model_name,
)
from workflow_utils import base_config, snakemake, write_config

CATALOG = {
    "datasets": {
        "msmarco": {"md5": "x", "split": "dev"},
        "cqadupstack": {"md5": "y", "split": "test", "subsets": ["android", "gis"]},
        "bioasq": {"public": False},
    }
}


def test_units_expand_subsets_and_take_catalog_split():
    units = dataset_units({"datasets": {"msmarco": {"shards": 4}, "cqadupstack": {}}}, CATALOG)
    assert [u.name for u in units["cqadupstack"]] == ["cqadupstack--android", "cqadupstack--gis"]
    (ms,) = units["msmarco"]
    assert ms.split == "dev" and ms.shards == 4 and ms.source == "beir"


def test_non_public_dataset_needs_a_local_folder():
    with pytest.raises(InputError, match="datasets.bioasq: not freely downloadable"):
        dataset_units({"datasets": {"bioasq": {}}}, CATALOG)
    units = dataset_units({"datasets": {"bioasq": {"source": "local", "path": "/x"}}}, CATALOG)
    assert units["bioasq"][0].path == "/x"


def test_local_unit_files_are_the_ones_conversion_reads():
    config = {
        "datasets": {
            "mine": {"source": "local", "path": "/d/mine", "split": "dev"},
            "forums": {"source": "local", "path": "/d/cqa", "subsets": ["unix", "gis"]},
        }
    }
    units = dataset_units(config, CATALOG)
    assert local_unit_files(units["mine"][0]) == [
        "/d/mine/corpus.jsonl",
        "/d/mine/queries.jsonl",
        "/d/mine/qrels/dev.tsv",
    ]
    assert local_unit_files(units["forums"][1]) == [
        "/d/cqa/gis/corpus.jsonl",
        "/d/cqa/gis/queries.jsonl",
        "/d/cqa/gis/qrels/test.tsv",
    ]
    with pytest.raises(ValueError, match="msmarco is not a local data set"):
        local_unit_files(dataset_units({"datasets": {"msmarco": {}}}, CATALOG)["msmarco"][0])


def test_unknown_catalog_entry_is_named():
    with pytest.raises(InputError, match="datasets.nope: not in the BEIR catalog"):
        dataset_units({"datasets": {"nope": {}}}, CATALOG)


def test_model_kind_and_workflow_models():
    cfg = {"models": {"b": {"type": "bm25"}, "d": {"source": "x"}}}
    assert model_kind(cfg, "b") == "bm25" and model_kind(cfg, "d") == "dense"
    with pytest.raises(InputError, match="models.z"):
        model_kind(cfg, "z")
    assert workflow_model_name("workflow:tiny") == "tiny"
    assert workflow_model_name("facebook/contriever") is None


def test_table_cells_only_for_computed_columns():
    spec = {
        "datasets": ["a", "b"],
        "columns": [{"name": "P", "paper": "bm25"}, {"name": "M", "model": "m"}],
    }
    assert table_cells(spec) == [("m", "a"), ("m", "b")]


def test_check_references_names_the_key():
    cfg = {
        "models": {"m": {}},
        "datasets": {"a": {}},
        "tables": {"t": {"datasets": ["a"], "columns": [{"name": "X", "model": "q"}]}},
    }
    with pytest.raises(InputError, match=r"tables.t.columns\[0\]: model 'q'"):
        check_references(cfg)
    cfg["tables"]["t"] = {"datasets": ["zz"], "columns": []}
    with pytest.raises(InputError, match="tables.t.datasets: 'zz'"):
        check_references(cfg)


FEWSHOT = {
    "datasets": ["a", "b"],
    "columns": [
        {"name": "BM25", "paper": "bm25"},
        {"name": "Few-shot", "model": "fs-{dataset}"},
        {"name": "Plain", "model": "m"},
    ],
}


def test_table_cells_expand_a_model_template_per_dataset():
    assert table_cells(FEWSHOT) == [("fs-a", "a"), ("fs-b", "b"), ("m", "a"), ("m", "b")]


def test_check_references_checks_each_expanded_template():
    cfg = {"models": {"m": {}, "fs-a": {}}, "datasets": {"a": {}, "b": {}}, "tables": {}}
    cfg["tables"]["table3"] = FEWSHOT
    with pytest.raises(
        InputError,
        match=r"tables\.table3\.columns\[1\] \('Few-shot'\): model 'fs-b' \(template "
        r"'fs-\{dataset\}' for data set 'b'\) is not defined under models",
    ):
        check_references(cfg)
    cfg["models"]["fs-b"] = {}
    check_references(cfg)
    # The template itself is not a model name, and needs no entry of its own.
    assert "fs-{dataset}" not in cfg["models"]


SWEEP = {
    "kind": "queue_sweep",
    "metric": "ndcg@10",
    "datasets": ["a", "b"],
    "series": [
        {"name": "no FT", "points": [{"x": 2048, "model": "q2k"}, {"x": 8192, "model": "q8k"}]},
        {"name": "FT", "points": [{"x": 2048, "model": "q2k-ft"}]},
    ],
}


def test_table_cells_of_a_queue_sweep_are_every_point_on_every_dataset():
    assert table_cells(SWEEP) == [
        ("q2k", "a"),
        ("q2k", "b"),
        ("q8k", "a"),
        ("q8k", "b"),
        ("q2k-ft", "a"),
        ("q2k-ft", "b"),
    ]
    # Malformed series are left to the figure's own validation, not a crash here.
    assert table_cells({**SWEEP, "series": [None, {"points": None}, {"points": [3]}]}) == []


def test_check_references_names_the_sweep_point():
    cfg = {
        "models": {"q2k": {}, "q8k": {}},
        "datasets": {"a": {}, "b": {}},
        "figures": {"figure2": SWEEP},
    }
    with pytest.raises(
        InputError, match=r"figures.figure2.series\[1\].points\[0\]: model 'q2k-ft'"
    ):
        check_references(cfg)
    cfg["models"]["q2k-ft"] = {}
    check_references(cfg)
    cfg["figures"]["figure2"] = {**SWEEP, "datasets": ["a", "zz"]}
    with pytest.raises(InputError, match="figures.figure2.datasets: 'zz'"):
        check_references(cfg)


def test_stable_hash_changes_with_content_only():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_pretraining_experiments_are_checked_against_corpora_and_tokenizers():
    from contriever_repro.errors import InputError
    from contriever_repro.plan import check_pretraining, pretrain_config

    config = {
        "pretraining_corpora": {"wiki": {"kind": "text", "path": "x.txt"}},
        "tokenizers": {"bert": {"source": "bert-base-uncased"}},
        "pretraining": {"ok": {"sources": ["wiki"], "tokenizer": "bert"}},
    }
    assert pretrain_config(config, "ok").sources == ("wiki",)
    config["pretraining"]["bad"] = {"sources": ["wiki", "ccnet"], "tokenizer": "bert"}
    with pytest.raises(InputError, match=r"pretraining\.bad\.sources: 'ccnet' is not defined"):
        check_pretraining(config)
    config["pretraining"]["bad"] = {"sources": ["wiki"], "tokenizer": "mbert"}
    with pytest.raises(InputError, match=r"pretraining\.bad\.tokenizer: 'mbert'"):
        check_pretraining(config)
    with pytest.raises(InputError, match=r"pretraining\.nope: not defined"):
        pretrain_config(config, "nope")


# ------------------------------------------------------------ table/figure specs at start-up

ROOT = Path(__file__).resolve().parents[1]
# The paper reports ndcg@20 too: a quoted column may show what the evaluation does not compute.
PAPER = {"systems": {"bm25": {f"ndcg@{k}": {"a": 50.0, "b": 40.0} for k in (10, 20)}}}


def report_config() -> dict:
    """A config whose tables and figures all pass; each test breaks one thing."""
    return {
        "models": {"m": {}, "q2k": {}, "q8k": {}, "q2k-ft": {}},
        "datasets": {"a": {}, "b": {}},
        "evaluation": {"k_values": [1, 10, 100]},
        "tables": {
            "table2": {
                "blocks": [{"metric": "ndcg@10"}],
                "datasets": ["a", "b"],
                "columns": [{"name": "BM25", "paper": "bm25"}, {"name": "M", "model": "m"}],
            },
        },
        "figures": {
            "figure1": {
                "metric": "recall@100",
                "metric_overrides": {"a": "recall_cap@100"},
                "datasets": ["a", "b"],
                "columns": [{"name": "M", "model": "m"}],
            },
            "figure2": copy.deepcopy(SWEEP),
        },
    }


def test_check_reports_accepts_the_shipped_configs():
    for name in ("config.yaml", "demo.yaml"):
        config = yaml.safe_load((ROOT / "config" / name).read_text(encoding="utf-8"))
        config["paper_results"] = str(ROOT / config["paper_results"])
        check_reports(config)  # loads config.paper_results itself
    check_reports(report_config(), PAPER)


def test_known_metrics_are_every_family_at_the_configured_ks():
    known = known_metrics({"evaluation": {"k_values": [10, 100]}})
    assert {"ndcg@10", "recall@100", "recall_cap@100", "mrr@10", "accuracy@100"} <= known
    assert "ndcg@20" not in known and "ndcg@1000" not in known
    assert len(known) == 8 * 2


def _set(config: dict, path: str, value) -> dict:
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = config
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return config


_DELETE = object()

BAD_REPORTS = [
    # metric typos, and metrics the evaluation does not compute
    (
        "tables.table2.blocks.0.metric",
        "ndgc@10",
        r"tables\.table2\.blocks\[0\]\.metric: unknown "
        r"metric 'ndgc@10'.*did you mean 'ndcg@10'",
    ),
    (
        "tables.table2.blocks.0.metric",
        "ndcg@20",
        r"tables\.table2\.blocks\[0\]\.metric: metric "
        r"'ndcg@20' is not computed by the evaluation .*k_values \[1, 10, 100\]",
    ),
    (
        "figures.figure1.metric_overrides.a",
        "recall_cap@1000",
        r"figures\.figure1\.metric_overrides\.a: metric 'recall_cap@1000' is not computed",
    ),
    ("figures.figure2.metric", "ndcg@5", r"figures\.figure2\.metric: metric 'ndcg@5' is not"),
    ("figures.figure2.metric", "ndgc@10", r"figures\.figure2\.metric: required, <family>@<k>"),
    # key typos inside a spec, unknown models, data sets and paper systems
    ("tables.table2.colums", [], r"tables\.table2\.spec: unknown key\(s\) \['colums'\]"),
    ("tables.table2.columns.1.modle", "m", r"tables\.table2\.columns\[1\]: unknown key"),
    ("tables.table2.columns.1.model", "mm", r"tables\.table2\.columns\[1\]: model 'mm'"),
    (
        "tables.table2.columns.0.paper",
        "bm52",
        r"tables\.table2\.columns\[0\] \('BM25'\)\.paper: "
        r"unknown paper system 'bm52'",
    ),
    ("tables.table2.datasets.1", "c", r"tables\.table2\.datasets: 'c' is not defined"),
    ("figures.figure1.colour", "red", r"figures\.figure1\.spec: unknown key\(s\) \['colour'\]"),
    ("figures.figure1.kind", "pie", r"figures\.figure1\.kind: unknown kind 'pie'"),
    ("figures.figure2.series.1.points.0.model", "q3k", r"figures\.figure2\.series\[1\]\.points"),
    ("tables.table2", ["not", "a", "mapping"], r"tables\.table2\.spec: expected a mapping"),
]


@pytest.mark.parametrize(("path", "value", "needle"), BAD_REPORTS)
def test_check_reports_names_the_table_and_key(path, value, needle):
    with pytest.raises(InputError, match=needle):
        check_reports(_set(report_config(), path, value), PAPER)


@pytest.mark.parametrize(
    ("kind", "old", "new"),
    [
        ("tables", "table2", "tabel2"),
        ("tables", "table2", "table2x1"),
        ("tables", "table2", "Table2"),
        ("figures", "figure1", "Figure1"),
        ("figures", "figure2", "fig2"),
        ("figures", "figure2", "table3"),
    ],
)
def test_report_keys_must_be_names_the_rules_build(kind, old, new):
    config = report_config()
    config[kind][new] = config[kind].pop(old)
    stem = kind[:-1]
    with pytest.raises(InputError, match=rf"{kind}\.{new}: a {stem} key must look like {stem}N"):
        check_reports(config, PAPER)


def test_quoted_only_tables_need_no_computed_metric():
    """A table of paper numbers only may show a metric the evaluation does not compute."""
    config = report_config()
    config["tables"]["table2"]["columns"] = [{"name": "BM25", "paper": "bm25"}]
    config["evaluation"]["k_values"] = [100]
    config["figures"] = {}
    check_reports(config, PAPER)
    config["tables"]["table2"]["columns"].append({"name": "M", "model": "m"})
    with pytest.raises(InputError, match="'ndcg@10' is not computed"):
        check_reports(config, PAPER)


def test_check_reports_reads_the_paper_file_only_when_needed(tmp_path):
    config = report_config()
    config["paper_results"] = str(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="missing.yaml: file does not exist"):
        check_reports(config)
    check_reports({**config, "tables": {}, "figures": {}})


DEMO_TYPOS = [
    (
        "tables.table2.blocks.0.metric",
        "ndgc@10",
        "tables.table2.blocks[0].metric: unknown metric 'ndgc@10'",
    ),
    ("tables.table6", "rename:tabel6", "tables.tabel6: a table key must look like tableN"),
    (
        "figures.figure2.metric",
        "ndcg@20",
        "figures.figure2.metric: metric 'ndcg@20' is not computed by the evaluation",
    ),
    ("tables.table7.columns.1.modle", "demo-crop", "tables.table7.columns[1]: unknown key(s)"),
]


@pytest.mark.workflow
@pytest.mark.parametrize(("path", "value", "message"), DEMO_TYPOS)
def test_dry_run_fails_at_once_on_a_report_typo(tmp_path, path, value, message):
    """`snakemake -n` stops at start-up with the message, before planning any job."""
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config |= base_config(tmp_path)
    if isinstance(value, str) and value.startswith("rename:"):
        kind, old = path.split(".")
        config[kind] = {value[7:] if k == old else k: v for k, v in config[kind].items()}
    else:
        _set(config, path, value)
    cfg = write_config(tmp_path / "typo.yaml", config)
    proc = snakemake("-n", "--configfile", str(cfg), cwd=tmp_path, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in output, output[-3000:]
    assert "Building DAG" not in output
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()


def test_model_card_cells_are_the_evaluations_of_the_exported_model():
    config = {
        "models": {
            "trained": {"source": "workflow:run1"},
            "trained-msmarco": {"source": "workflow:run1", "max_query_length": 64},
            "other": {"source": "workflow:run2"},
            "hub": {"source": "facebook/contriever"},
        },
        "tables": {
            "table2": {
                "datasets": ["b", "a"],
                "columns": [{"model": "trained"}, {"model": "hub"}, {"paper": "x"}],
            },
            "table3": {"datasets": ["a"], "columns": [{"model": "trained-msmarco"}]},
        },
        "figures": {"figure2": {"datasets": ["c"], "series": [{"points": [{"model": "other"}]}]}},
    }
    assert model_card_cells(config, "run1") == [
        ("trained", "a"),
        ("trained", "b"),
        ("trained-msmarco", "a"),
    ]
    assert model_card_cells(config, "run2") == [("other", "c")]
    assert model_card_cells(config, "nothing") == []


def test_model_location_is_the_built_or_prefetched_folder(tmp_path):
    from contriever_repro.plan import model_location

    assert model_location("workflow:contriever", "w") == "w/models/contriever"
    assert model_location("facebook/contriever", "w") == "w/models/hub/facebook--contriever"
    assert model_location("bert-base-uncased", "w") == "w/models/hub/bert-base-uncased"
    assert model_location(str(tmp_path), "w") is None  # a local folder is read in place


def _qa_config(**changes) -> dict:
    config = {
        "datasets": {"scifact": {}},
        "passage_collections": {"wiki": {"url": "https://x/psgs_w100.tsv.gz", "shards": 4}},
        "qa_sets": {"nq-open": {"collection": "wiki", "url": "https://x/nq-test.qa.csv"}},
        "mkqa": {"collection": "wiki", "languages": ["en", "ar", "zh_cn"]},
    }
    config.update(changes)
    return config


def test_question_sets_are_the_qa_sets_then_one_per_mkqa_language():
    from contriever_repro.plan import qa_sets, qa_source_config

    sets = qa_sets(_qa_config())
    assert list(sets) == ["nq-open", "mkqa-en", "mkqa-ar", "mkqa-zh_cn"]
    assert (sets["mkqa-ar"].kind, sets["mkqa-ar"].language) == ("mkqa", "ar")
    assert not sets["mkqa-ar"].normalize_answers  # the authors match with NFD only
    source = qa_source_config(_qa_config(), "mkqa-ar")
    assert source["questions"]["language"] == "ar" and "languages" not in source["questions"]
    assert source["collection"]["shards"] == 4


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"mkqa": {"collection": "wiki", "languages": ["en", "zh"]}}, "MKQA has no language 'zh'"),
        ({"mkqa": {"collection": "wiki", "languages": ["en", "bn"]}}, "MKQA has no language 'bn'"),
        ({"qa_sets": {"nq-open": {"collection": "wikipedia"}}}, "qa_sets.nq-open.collection"),
        ({"qa_sets": {"scifact": {"collection": "wiki"}}}, "'scifact' is already used"),
        ({"passage_collections": {"scifact": {}}, "qa_sets": {}, "mkqa": None}, "also a data set"),
    ],
)
def test_question_set_config_errors_name_the_key(changes, needle):
    from contriever_repro.plan import qa_sets

    with pytest.raises(InputError, match=needle):
        qa_sets(_qa_config(**changes))


def test_tables_may_name_question_sets_and_read_accuracy_at_the_qa_ks():
    from contriever_repro.plan import check_references, known_metrics

    config = _qa_config(
        models={"m": {"source": "x"}},
        evaluation={"k_values": [10]},
        qa={"k_values": [5, 20]},
        tables={"table1": {"datasets": ["nq-open", "mkqa-ar"], "columns": [{"model": "m"}]}},
    )
    check_references(config)
    assert {"accuracy@5", "accuracy@20", "ndcg@10"} <= known_metrics(config)
    assert "accuracy@100" not in known_metrics(config)
    config["tables"]["table1"]["datasets"].append("mkqa-de")
    with pytest.raises(InputError, match="'mkqa-de' is not defined"):
        check_references(config)


# ------------------------------------------------------------ Mr. TyDi and re-ranking


def _paper_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))


def _catalog() -> dict:
    return yaml.safe_load((ROOT / "config" / "beir_datasets.yaml").read_text(encoding="utf-8"))


def test_mrtydi_data_sets_are_units_from_their_archives():
    config = _paper_config()
    units = dataset_units(config, _catalog())
    tydi = {name: u[0] for name, u in units.items() if name.startswith("mrtydi-")}
    assert len(tydi) == 11 and {u.source for u in tydi.values()} == {"mrtydi"}
    assert {u.split for u in tydi.values()} == {"test"} and tydi["mrtydi-en"].shards == 64


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c["datasets"]["mrtydi-ar"].update(language="de"),
         "datasets.mrtydi-ar.language: Mr. TyDi has no language 'de' (its 11: ar, bn, en"),
        (lambda c: c["datasets"]["mrtydi-ar"].pop("language"),
         "datasets.mrtydi-ar.language: Mr. TyDi has no language None"),
        (lambda c: c.pop("mrtydi"), "datasets.mrtydi-ar: a Mr. TyDi data set needs `mrtydi.url`"),
    ],
)  # fmt: skip
def test_a_mrtydi_language_missing_from_the_config_is_named(change, needle):
    config = _paper_config()
    change(config)
    with pytest.raises(InputError) as err:
        dataset_units(config, _catalog())
    assert needle in str(err.value)


def test_rerank_models_take_their_cross_encoder_settings():
    cfg = rerank_config(_paper_config(), "contriever-msmarco-ce")
    assert cfg["first_stage"] == "contriever-msmarco" and cfg["depth"] == 100
    ce = cfg["cross_encoder_config"]
    assert ce["source"] == "cross-encoder/ms-marco-MiniLM-L-6-v2" and ce["label_index"] is None
    assert (ce["max_length"], ce["dtype"]) == (512, "fp16")
    assert "cross-encoder--ms-marco-MiniLM-L-6-v2" in hub_sources(_paper_config())


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c["models"]["contriever-msmarco-ce"].update(first_stage="nope"),
         "models.contriever-msmarco-ce.first_stage: 'nope' is not defined under models"),
        (lambda c: c["models"]["contriever-msmarco-ce"].update(
            first_stage="contriever-msmarco-ft-ce"), "is itself a re-ranking"),
        (lambda c: c["models"]["contriever-msmarco-ce"].update(cross_encoder="nope"),
         "models.contriever-msmarco-ce.cross_encoder: 'nope' is not defined under cross_encoders"),
        (lambda c: c["models"]["contriever-msmarco-ce"].update(depth=5000),
         "depth: 5000 is more than the first stage retrieves (evaluation.top_k 1000)"),
        (lambda c: c["cross_encoders"]["ms-marco-minilm-l6"].update(source="workflow:nope"),
         "cross_encoders.ms-marco-minilm-l6.source: workflow:nope is built by no fine-tuning"),
    ],
)  # fmt: skip
def test_rerank_config_errors_name_the_key(change, needle):
    config = _paper_config()
    change(config)
    with pytest.raises(InputError) as err:
        model_kind(config, "contriever-msmarco-ce")
    assert needle in str(err.value)


def test_finetuning_on_several_data_sets_checks_each():
    config = _paper_config()
    cfg = finetune_config(config, "mcontriever-mrtydi-ft")
    languages = ("ar", "bn", "en", "fi", "id", "ja", "ko", "ru", "sw", "te", "th")
    assert cfg.datasets == tuple(f"mrtydi-{c}" for c in languages)
    assert (cfg.hard_ratio, cfg.passage_pool, cfg.mined_by) == (
        1.0, "referenced", "mcontriever-msmarco-ft",
    )  # fmt: skip
    # mining encodes Mr. TyDi with its evaluation settings (the text normaliser on)
    miner = mining_model(config, "mcontriever-mrtydi-ft", cfg.mined_by)
    assert config["models"][miner]["normalize_text"] is True
    config["finetuning"]["mcontriever-mrtydi-ft"]["data"] = ["mrtydi-ar", "mrtydi-xx"]
    with pytest.raises(InputError, match="finetuning.mcontriever-mrtydi-ft.data: 'mrtydi-xx'"):
        finetune_config(config, "mcontriever-mrtydi-ft")
