"""Paper Table 12 (languages of pre-training, Mr. TyDi, MKQA), generated from the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contriever_repro import plan
from contriever_repro.errors import InputError
from contriever_repro.reporting.languages import (
    NO,
    YES,
    build_languages_table,
    language_code,
    row_languages,
)
from contriever_repro.reporting.tables import load_paper_results

ROOT = Path(__file__).resolve().parents[1]
PAPER_TEXT = [p / "shared" / "paper" / "contriever-paper.txt" for p in (ROOT, ROOT.parent)]


@pytest.fixture(scope="module")
def paper():
    return load_paper_results(ROOT / "config" / "paper_results.yaml")


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))


def _printed_table12() -> dict[str, set[str]]:
    """The paper's grid: blocks of `Language` + one row per use, ✓/✗ per language."""
    found = [p for p in PAPER_TEXT if p.exists()]
    if not found:
        pytest.skip("paper text not available")
    text = found[0].read_text(encoding="utf-8")
    lines = text[text.index("Table 12: ") : text.index("Table 13: ")].splitlines()
    rows: dict[str, set[str]] = {}
    order: list[str] = []
    header: list[str] = []
    for line in lines:
        name, *cells = line.split("\t")
        if name == "Language":
            header = cells
            order += cells
        elif header and len(cells) == len(header):
            rows.setdefault(name, set()).update(
                c for c, m in zip(header, cells, strict=True) if m == YES
            )
    rows["_order"] = order  # type: ignore[assignment]
    return rows


def test_table12_is_transcribed_as_printed(paper):
    printed = _printed_table12()
    stored = paper["table12"]
    assert stored["languages"] == printed.pop("_order")
    assert {row: set(codes) for row, codes in stored["rows"].items()} == printed
    assert [len(stored["rows"][r]) for r in ("Pre-training", "Mr. TyDi", "MKQA")] == [29, 11, 26]


def test_paper_config_gives_the_papers_languages_but_its_misprint(config, paper):
    spec = config["tables"]["table12"]
    rows = row_languages(config, "table12", spec)
    stored = paper["table12"]["rows"]
    assert set(rows["Pre-training"]) == set(stored["Pre-training"])
    assert set(rows["MKQA"]) == set(stored["MKQA"])
    # Mr. TyDi has English and no Spanish; the paper's row swaps the two.
    assert set(rows["Mr. TyDi"]) ^ set(stored["Mr. TyDi"]) == {"en", "es"}
    built = build_languages_table("table12", spec, rows, paper)
    differs = built.long[built.long["differs"]]
    assert sorted(zip(differs["row"], differs["language"], strict=True)) == [
        ("Mr. TyDi", "en"),
        ("Mr. TyDi", "es"),
    ]
    assert differs["misprint"].str.contains("swapped").all()
    wide = built.wide.set_index("row")
    assert wide.at["Mr. TyDi", "en"] == YES and wide.at["Mr. TyDi [paper]", "en"] == NO
    assert wide.at["Pre-training", "zh-hk"] == NO and wide.at["MKQA", "zh-hk"] == YES
    assert list(wide.columns) == paper["table12"]["languages"]
    assert built.csv.startswith("# ") and "Mr. TyDi [differs]" in built.csv
    assert "(paper ✗)" in built.markdown and "swapped" in built.markdown


def test_rows_follow_the_config(config, paper):
    """A language dropped from the MKQA evaluation or added to pre-training shows."""
    changed = yaml.safe_load(yaml.safe_dump(config))
    changed["mkqa"]["languages"] = [c for c in changed["mkqa"]["languages"] if c != "km"]
    changed["pretraining_corpora"]["ccnet-xx"] = {"kind": "cc100", "language": "xx", "url": "u"}
    changed["pretraining"]["mcontriever"]["sources"].append("ccnet-xx")
    rows = row_languages(changed, "table12", changed["tables"]["table12"])
    assert "km" not in rows["MKQA"] and rows["Pre-training"][-1] == "xx"
    built = build_languages_table("table12", changed["tables"]["table12"], rows, paper)
    assert list(built.wide.columns)[-1] == "xx"  # after the paper's languages


def test_codes_have_one_spelling():
    assert [language_code(c) for c in ("zh_CN", "zh_cn", "zh-TW", " no ")] == [
        "zh-cn",
        "zh-cn",
        "zh-tw",
        "no",
    ]


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda s: s.update(extra=1), "unknown keys ['extra']"),
        (lambda s: s["rows"][0].update(datasets="mkqa"), "exactly one of"),
        (lambda s: s["rows"][1].update(datasets="beir"), "must be one of ['mrtydi', 'mkqa']"),
        (lambda s: s["rows"][0].update(pretraining="nope"), "'nope' is not a pretraining"),
        (lambda s: s["rows"].append({"name": "MKQA", "datasets": "mkqa"}), "duplicated row"),
    ],
)
def test_bad_specs_name_the_key(config, change, needle):
    spec = yaml.safe_load(yaml.safe_dump(config["tables"]["table12"]))
    change(spec)
    with pytest.raises(InputError, match="tables.table12") as err:
        row_languages(config, "table12", spec)
    assert needle in str(err.value)


def test_a_corpus_without_a_language_is_named(config):
    changed = yaml.safe_load(yaml.safe_dump(config))
    del changed["pretraining_corpora"]["ccnet-fr"]["language"]
    with pytest.raises(InputError, match=r"pretraining_corpora\.ccnet-fr: no `language`"):
        plan.check_reports(changed)
