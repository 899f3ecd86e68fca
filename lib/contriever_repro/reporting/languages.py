"""Paper Table 12, the languages of the multilingual work, generated from the config.

The table is not a list typed in once: each row is read from the configuration that
drives the runs, so it cannot drift from what ran. A row names its source:

* `pretraining: <experiment>`: the languages of that experiment's corpora
  (`pretraining_corpora.<name>.language`, or `languages` for a mixed corpus);
* `datasets: mrtydi`: the languages of the Mr. TyDi data sets (`source: mrtydi`);
* `datasets: mkqa`: the MKQA languages evaluated (`mkqa.languages`).

Codes are compared in one form, lower case with "-" (`zh_CN`, `zh_cn` -> `zh-cn`). The
paper's marks (config/paper_results.yaml `table12`) stand beside each row, and every cell
where the config and the print differ is marked, with the paper's known misprints
(`misprints`) explained in the Markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..errors import InputError
from .tables import BuiltTable, csv_comment_lines

KIND = "languages"
_SPEC_KEYS = {"kind", "caption", "paper_table", "rows"}
_ROW_SOURCES = ("pretraining", "datasets")
_DATASET_GROUPS = ("mrtydi", "mkqa")
YES, NO = "✓", "✗"
CSV_NOTE = (
    f'"{YES}": the language is used, "{NO}": not; "<row> [paper]": the paper\'s mark; '
    '"<row> [differs]": 1 where this config and the paper disagree.'
)


def is_languages_spec(spec: Any) -> bool:
    return isinstance(spec, Mapping) and spec.get("kind") == KIND


def language_code(code: Any) -> str:
    """One spelling per language: lower case, "_" as "-" (CCNet's zh_CN, MKQA's zh_cn)."""
    return str(code).strip().lower().replace("_", "-")


def _err(name: str, key: str, message: str) -> InputError:
    return InputError(f"tables.{name}.{key}: {message}")


def parse_languages_spec(name: str, spec: Mapping) -> list[dict]:
    """The rows of a `kind: languages` table spec, validated (errors name table and key)."""
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise _err(name, "spec", f"unknown keys {unknown} (allowed: {sorted(_SPEC_KEYS)})")
    rows = spec.get("rows")
    if not isinstance(rows, list) or not rows:
        raise _err(name, "rows", "required: a list of {name, pretraining | datasets}")
    out, seen = [], set()
    for i, row in enumerate(rows):
        key = f"rows[{i}]"
        if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
            raise _err(name, key, "expected {name: ..., pretraining: <experiment>} or "
                       "{name: ..., datasets: mrtydi | mkqa}")  # fmt: skip
        extra = sorted(set(row) - {"name", *_ROW_SOURCES})
        sources = [s for s in _ROW_SOURCES if s in row]
        if extra or len(sources) != 1:
            raise _err(name, key, "needs `name` and exactly one of `pretraining`, `datasets`")
        if sources == ["datasets"] and row["datasets"] not in _DATASET_GROUPS:
            raise _err(name, f"{key}.datasets", f"must be one of {list(_DATASET_GROUPS)}")
        if row["name"] in seen:
            raise _err(name, f"{key}.name", f"duplicated row {row['name']!r}")
        seen.add(row["name"])
        out.append(dict(row))
    return out


def row_languages(config: Mapping, name: str, spec: Mapping) -> dict[str, list[str]]:
    """Row name -> the language codes the config uses for it, in config order."""
    out = {}
    for i, row in enumerate(parse_languages_spec(name, spec)):
        where = f"tables.{name}.rows[{i}]"
        if "pretraining" in row:
            codes = _pretraining_languages(config, str(row["pretraining"]), where)
        elif row["datasets"] == "mrtydi":
            codes = [
                cfg.get("language", "")
                for cfg in (config.get("datasets") or {}).values()
                if (cfg or {}).get("source") == "mrtydi"
            ]
            if not codes:
                raise InputError(f"{where}.datasets: no data set has source: mrtydi")
        else:
            mkqa = config.get("mkqa") or {}
            if not mkqa:
                raise InputError(f"{where}.datasets: the config has no `mkqa:` section")
            from ..data.mkqa import MKQA_LANGUAGES

            codes = list(mkqa.get("languages") or MKQA_LANGUAGES)
        out[row["name"]] = list(dict.fromkeys(language_code(c) for c in codes))
    return out


def _pretraining_languages(config: Mapping, experiment: str, where: str) -> list[str]:
    experiments = config.get("pretraining") or {}
    if experiment not in experiments:
        raise InputError(
            f"{where}.pretraining: '{experiment}' is not a pretraining experiment "
            f"(known: {sorted(experiments)})"
        )
    corpora = config.get("pretraining_corpora") or {}
    codes = []
    for src in (experiments[experiment] or {}).get("sources") or []:
        cfg = corpora.get(src) or {}
        found = cfg.get("languages") or ([cfg["language"]] if cfg.get("language") else [])
        if not found:
            raise InputError(
                f"pretraining_corpora.{src}: no `language` (or `languages`) to list in "
                f"{where} (pretraining experiment '{experiment}')"
            )
        codes += found
    return codes


def build_languages_table(
    name: str, spec: Mapping, languages: Mapping[str, Sequence[str]], paper: Mapping | None,
    label: str = "",
) -> BuiltTable:  # fmt: skip
    """Long, wide, Markdown and CSV forms of Table 12 from the config's `languages`."""
    caption = str(spec.get("caption") or name)
    # Only a spec that names the paper's table is compared with it (not the demo's).
    printed = (paper or {}).get(str(spec["paper_table"])) or {} if spec.get("paper_table") else {}
    order = [language_code(c) for c in printed.get("languages") or []]
    used = dict.fromkeys(c for codes in languages.values() for c in codes)
    columns = order + [c for c in used if c not in order]  # then in the config's order
    paper_rows = {k: {language_code(c) for c in v} for k, v in (printed.get("rows") or {}).items()}
    misprints = {
        (m["row"], language_code(c)): m.get("note", "")
        for m in printed.get("misprints") or []
        for c in m.get("languages") or []
    }
    records = []
    for row, codes in languages.items():
        mine, theirs = set(codes), paper_rows.get(row)
        for code in columns:
            records.append(
                {
                    "row": row,
                    "language": code,
                    "used": code in mine,
                    "paper": None if theirs is None else code in theirs,
                    "misprint": misprints.get((row, code)),
                }
            )
    long = pd.DataFrame.from_records(
        records, columns=["row", "language", "used", "paper", "misprint"]
    )
    long["differs"] = long["paper"].notna() & (long["paper"] != long["used"])
    long.insert(0, "table", name)

    def mark(flag: Any) -> str:
        return "" if flag is None or pd.isna(flag) else (YES if flag else NO)

    wide_rows = []
    for row in languages:
        part = long[long["row"] == row].set_index("language")
        wide_rows.append({"row": row, **{c: mark(part.at[c, "used"]) for c in columns}})
        if row in paper_rows:
            wide_rows.append(
                {"row": f"{row} [paper]", **{c: mark(part.at[c, "paper"]) for c in columns}}
            )
            wide_rows.append(
                {"row": f"{row} [differs]", **{c: int(part.at[c, "differs"]) for c in columns}}
            )
    wide = pd.DataFrame(wide_rows, columns=["row", *columns])
    csv = csv_comment_lines(caption, label, CSV_NOTE) + wide.to_csv(index=False)
    return BuiltTable(long, wide, _markdown(long, languages, columns, caption, label), csv)


def _markdown(long: pd.DataFrame, languages, columns, caption: str, label: str) -> str:
    title = f"[{label}] {caption}" if label else caption
    lines = [f"# {title}", "", "| | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    notes = {}
    for row in languages:
        part = long[long["row"] == row].set_index("language")
        cells = []
        for code in columns:
            cell = YES if part.at[code, "used"] else NO
            if part.at[code, "differs"]:
                cell += f" (paper {YES if part.at[code, 'paper'] else NO})"
                if part.at[code, "misprint"]:
                    notes[row] = part.at[code, "misprint"]
            cells.append(cell)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"{YES}: used by this config; (paper X): the paper prints X there."]
    lines += [f"- {row}: {note}" for row, note in notes.items()]
    return "\n".join(lines) + "\n"
