import pytest

from contriever_repro.errors import InputError
from contriever_repro.plan import (
    check_references,
    dataset_units,
    model_card_cells,
    model_kind,
    stable_hash,
    table_cells,
    workflow_model_name,
)

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
