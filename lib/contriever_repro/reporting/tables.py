"""Paper-shaped tables: computed metrics beside the numbers quoted from the paper.

A table is built from three things: the long-form data-set metrics the workflow computed
(columns model, dataset, split, metric, value in [0, 1], n_queries, run, config_hash,
code_version), the quoted numbers (config/paper_results.yaml) and a table spec from the
workflow config. Every cell records where its number comes from, so a quoted number is
never mistaken for a reproduced one.

Table spec (one entry of `tables:` in the config)::

    caption: "BEIR nDCG@10 (paper Table 2)"
    paper_table: table2          # which paper table's reported averages and "Best on"
                                 # counts the quoted cells use (default: the spec's name)
    blocks:                      # one or more metric blocks, stacked vertically
      - metric: recall@100       # block metric; also the key of the quoted numbers
        label: Recall@100        # optional display name (default: the metric)
        metric_overrides: {trec-covid: recall_cap@100}   # computed metric per data set
    datasets: [msmarco, trec-covid, ...]                 # row order
    averages:                    # optional rows after the data sets, in this order
      - {name: "Avg. w/o CQA", exclude: [msmarco, cqadupstack]}
      - {name: "Avg.", exclude: [msmarco]}
    best_on: {exclude: [msmarco]}    # optional "Best on" row; `true` counts every data set
    columns:
      - {name: BM25, paper: bm25}                          # quoted from the paper
      - {name: "BM25 (computed)", model: bm25, paper: bm25}  # computed, compared to paper
      - {name: Mine, model: my-model}                      # computed, nothing to compare
      - {name: BERT, model: "fewshot-bert-{dataset}", paper: fewshot-bert}
                                   # a model per data set: `{dataset}` is the row's name

Conventions, chosen to reproduce the paper's own printed numbers:

* Values are x100. Averages of a computed column are the mean of its own unrounded
  cells over the data sets the average keeps, and are "missing" if any of them is:
  never an average over fewer data sets than the paper's.
* Quoted columns show the paper's reported averages and "Best on" counts (looked up by
  average name under `paper_table`); a "-" in the paper stays empty.
* "Best on" of a computed column counts the data sets (outside `best_on.exclude`) where
  its value, rounded to the displayed 0.1, is at least the value the paper printed for
  every other system shown: a quoted column's value, or the paper value of a computed
  column that names a `paper` system. It never competes with another column's computed
  value, so a computed BM25 cannot take a win from the released Contriever, and two
  computed columns quoting the same system each get the count they would have in the
  paper's table. A column never competes with its own system (same `paper` key, else
  same model): a computed BM25 does not take wins from the quoted BM25. Ties credit
  every tied column, as in the paper's Table 2 (FEVER). Printed "-" cells do not
  compete. A missing computed cell makes that column's count missing. Quoted columns
  show the paper's own count. Only when the paper printed none of the counted cells
  (no column names a paper system, e.g. the demo tables) do computed columns compete
  with each other's computed values, and then any missing cell makes every count
  missing. The paper counts MS MARCO in Table 2 and Table 11 but not in Table 10 (see
  config/paper_results.yaml).
* A computed column's `model` may hold the placeholder `{dataset}`: each row reads the
  model named by the template with the row's data set (Table 3 fine-tunes one model per
  data set). The long form records the expanded model name of each cell.
* Metric overrides change only what is computed: the paper's Recall@100 on trec-covid
  is already the capped recall, stored under `recall@100`.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..errors import InputError
from ..io import read_table, write_table, write_text

METRIC_FAMILIES = ("ndcg", "map", "recall", "recall_cap", "p", "mrr", "hole", "accuracy")
_METRIC_RE = re.compile(rf"^({'|'.join(METRIC_FAMILIES)})@[1-9][0-9]*$")

BEST_ON = "Best on"
QUOTED_MARK = "†"
OVERRIDE_MARK = "‡"

_SPEC_KEYS = {"caption", "paper_table", "blocks", "datasets", "averages", "best_on", "columns"}
_BLOCK_KEYS = {"metric", "label", "metric_overrides"}
_COLUMN_KEYS = {"name", "model", "paper"}
_AVERAGE_KEYS = {"name", "exclude"}
_METRICS_REQUIRED = ("model", "dataset", "metric", "value")
_METRICS_OPTIONAL = ("split", "n_queries", "run", "config_hash", "code_version")

LONG_COLUMNS = [
    "table",
    "block",
    "metric",
    "row",
    "row_kind",
    "column",
    "column_kind",
    "value",
    "source",
    "paper_value",
    "diff",
    "model",
    "paper_system",
    "split",
    "n_queries",
    "run",
    "config_hash",
    "code_version",
]


@dataclass(frozen=True)
class Column:
    """A table column: computed when it names a model, else quoted from a paper system."""

    name: str
    model: str | None
    paper: str | None

    @property
    def computed(self) -> bool:
        return self.model is not None

    @property
    def system(self) -> str:
        """Identity for "Best on": the quoted and computed versions of a system share it."""
        return self.paper if self.paper is not None else f"model:{self.model}"

    def model_for(self, dataset: str) -> str | None:
        """The model whose metrics fill this column's row `dataset` (None: quoted)."""
        return None if self.model is None else expand_model(self.model, dataset)


DATASET_PLACEHOLDER = "{dataset}"


def expand_model(model: str, dataset: str) -> str:
    """A column's model name for one row: `{dataset}` replaced by the data set."""
    return model.replace(DATASET_PLACEHOLDER, dataset)


def check_model_template(model: str) -> str | None:
    """Why a column's model name is not a valid template, or None when it is."""
    rest = model.replace(DATASET_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        return f"{model!r}: the only placeholder a model name may hold is {DATASET_PLACEHOLDER}"
    return None


@dataclass(frozen=True)
class Block:
    metric: str
    label: str
    overrides: Mapping[str, str]

    def metric_for(self, dataset: str) -> str:
        return self.overrides.get(dataset, self.metric)


@dataclass(frozen=True)
class Average:
    name: str
    exclude: tuple[str, ...]


@dataclass(frozen=True)
class TableSpec:
    """A validated table spec (see the module docstring for the YAML form)."""

    name: str
    caption: str
    paper_table: str
    blocks: tuple[Block, ...]
    datasets: tuple[str, ...]
    averages: tuple[Average, ...]
    best_on_exclude: tuple[str, ...] | None
    columns: tuple[Column, ...]

    def wide_names(self, column: Column) -> list[str]:
        """CSV column names of one table column."""
        if not column.computed:
            return [f"{column.name} [paper]"]
        if column.paper is None:
            return [column.name]
        return [column.name, f"{column.name} [paper]", f"{column.name} [diff]"]


@dataclass(frozen=True)
class BuiltTable:
    """A built table in its forms: long (parquet), wide (CSV: `csv` is its text), Markdown."""

    long: pd.DataFrame
    wide: pd.DataFrame
    markdown: str
    csv: str


# --------------------------------------------------------------------------- paper numbers


def load_paper_results(path: str | Path) -> dict:
    """Read config/paper_results.yaml, checking the shape the tables rely on."""
    path = Path(path)
    if not path.exists():
        raise InputError("file does not exist", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("systems"), dict):
        raise InputError("expected a mapping with a `systems:` mapping", path)
    for key, system in data["systems"].items():
        if not isinstance(system, dict):
            raise InputError(f"systems.{key}: expected a mapping", path)
        for metric, values in system.items():
            if _METRIC_RE.match(str(metric)) and not isinstance(values, dict):
                raise InputError(f"systems.{key}.{metric}: expected {{dataset: value}}", path)
    return data


def _systems(paper: Mapping | None) -> Mapping[str, Any]:
    if not paper:
        return {}
    return paper.get("systems", paper)


def _as_float(value: Any) -> float:
    return math.nan if value is None else float(value)


def paper_cell(paper: Mapping | None, system: str, metric: str, dataset: str) -> float | None:
    """A quoted per-data-set value; None when the paper has no such entry, NaN for "-"."""
    values = _systems(paper).get(system, {}).get(metric)
    if not isinstance(values, Mapping) or dataset not in values:
        return None
    return _as_float(values[dataset])


def paper_reported(
    paper: Mapping | None, system: str, table: str, metric: str, row: str
) -> float | None:
    """A reported average or "Best on" count; None when not reported, NaN for "-"."""
    entry = _systems(paper).get(system, {})
    if row == BEST_ON:
        found = entry.get("best_on", {}).get(table, {})
        return _as_float(found[metric]) if metric in found else None
    found = entry.get("averages", {}).get(table, {}).get(metric, {})
    return _as_float(found[row]) if row in found else None


# --------------------------------------------------------------------------- spec parsing


def _err(table: str, key: str, message: str) -> InputError:
    return InputError(f"tables.{table}.{key}: {message}")


def _check_keys(table: str, key: str, obj: Any, allowed: set[str]) -> Mapping:
    if not isinstance(obj, Mapping):
        raise _err(table, key, f"expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _err(table, key, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return obj


def suggest_metric(metric: Any) -> str:
    """ " (did you mean 'ndcg@10'?)" for a misspelt family, else ""."""
    family, sep, k = str(metric).partition("@")
    close = difflib.get_close_matches(family.lower(), METRIC_FAMILIES, n=1)
    return f" (did you mean '{close[0]}{sep}{k}'?)" if close and sep else ""


def _check_metric(table: str, key: str, metric: Any) -> str:
    if not isinstance(metric, str) or not _METRIC_RE.match(metric):
        raise _err(
            table,
            key,
            f"unknown metric {metric!r}{suggest_metric(metric)}; expected <family>@<k> with "
            f"family in {list(METRIC_FAMILIES)}",
        )
    return metric


def _check_csv_name(table: str, key: str, name: str) -> str:
    """Row and column names go into the CSV, where `#` starts a comment."""
    if "#" in name:
        raise _err(table, key, f"{name!r}: '#' is not allowed (it starts a comment in the CSV)")
    return name


def _dataset_list(table: str, key: str, value: Any, known: Sequence[str] | None) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(table, key, "expected a list of data-set names")
    for v in value:
        _check_csv_name(table, key, v)
    if len(set(value)) != len(value):
        raise _err(table, key, f"duplicated data set in {value}")
    if known is not None:
        unknown = [v for v in value if v not in known]
        if unknown:
            raise _err(table, key, f"data set(s) {unknown} are not in the table's `datasets`")
    return tuple(value)


def _check_paper_column(
    table: str,
    key: str,
    system: str,
    quoted: bool,
    systems: Mapping[str, Any],
    blocks: Sequence[Block],
    datasets: Sequence[str],
) -> None:
    """A column's paper system must exist; a quoted one must cover every cell it shows."""
    if system not in systems:
        raise _err(
            table, f"{key}.paper", f"unknown paper system {system!r}; known: {sorted(systems)}"
        )
    if not quoted:
        return
    missing = [b.metric for b in blocks if b.metric not in systems[system]]
    if missing:
        raise _err(table, f"{key}.paper", f"paper system {system!r} reports no {missing}")
    for block in blocks:
        absent = [d for d in datasets if d not in systems[system][block.metric]]
        if absent:
            raise _err(
                table, f"{key}.paper", f"paper system {system!r} has no {block.metric} for {absent}"
            )


def parse_table_spec(name: str, spec: Mapping, paper: Mapping | None) -> TableSpec:
    """Validate a table spec against the quoted numbers; errors name the table and key.

    With `paper=None` the `paper:` keys are not checked (for re-reading a built table).
    """
    spec = _check_keys(name, "spec", spec, _SPEC_KEYS)
    for required in ("blocks", "datasets", "columns"):
        if not spec.get(required):
            raise _err(name, required, "required and must not be empty")
    datasets = _dataset_list(name, "datasets", spec["datasets"], None)
    paper_table = str(spec.get("paper_table", name))

    if not isinstance(spec["blocks"], list):
        raise _err(name, "blocks", "expected a list of {metric: ...}")
    blocks = []
    for i, raw in enumerate(spec["blocks"]):
        key = f"blocks[{i}]"
        raw = _check_keys(name, key, raw, _BLOCK_KEYS)
        metric = _check_metric(name, f"{key}.metric", raw.get("metric"))
        overrides = raw.get("metric_overrides") or {}
        if not isinstance(overrides, Mapping):
            raise _err(name, f"{key}.metric_overrides", "expected {dataset: metric}")
        for ds, override in overrides.items():
            if ds not in datasets:
                raise _err(name, f"{key}.metric_overrides.{ds}", "not in the table's `datasets`")
            _check_metric(name, f"{key}.metric_overrides.{ds}", override)
        blocks.append(Block(metric, str(raw.get("label") or metric), dict(overrides)))
    if len({b.metric for b in blocks}) != len(blocks):
        raise _err(name, "blocks", "two blocks have the same metric")

    averages = []
    for i, raw in enumerate(spec.get("averages") or []):
        key = f"averages[{i}]"
        raw = _check_keys(name, key, raw, _AVERAGE_KEYS)
        avg_name = raw.get("name")
        if not isinstance(avg_name, str) or not avg_name:
            raise _err(name, f"{key}.name", "required")
        _check_csv_name(name, f"{key}.name", avg_name)
        if avg_name in datasets or avg_name == BEST_ON:
            raise _err(name, f"{key}.name", f"{avg_name!r} clashes with another row")
        if avg_name in {a.name for a in averages}:
            raise _err(name, f"{key}.name", f"duplicated average {avg_name!r}")
        exclude = _dataset_list(name, f"{key}.exclude", raw.get("exclude"), datasets)
        if len(exclude) == len(datasets):
            raise _err(name, f"{key}.exclude", "excludes every data set")
        averages.append(Average(avg_name, exclude))

    best_on = spec.get("best_on", False)
    if best_on is True:
        best_on_exclude: tuple[str, ...] | None = ()
    elif best_on is False or best_on is None:
        best_on_exclude = None
    else:
        raw = _check_keys(name, "best_on", best_on, {"exclude"})
        best_on_exclude = _dataset_list(name, "best_on.exclude", raw.get("exclude"), datasets)

    systems = _systems(paper)
    if not isinstance(spec["columns"], list):
        raise _err(name, "columns", "expected a list of {name, model, paper}")
    columns: list[Column] = []
    for i, raw in enumerate(spec["columns"]):
        key = f"columns[{i}]"
        raw = _check_keys(name, key, raw, _COLUMN_KEYS)
        col_name, model, system = raw.get("name"), raw.get("model"), raw.get("paper")
        if not isinstance(col_name, str) or not col_name:
            raise _err(name, f"{key}.name", "required")
        _check_csv_name(name, f"{key}.name", col_name)
        key = f"columns[{i}] ({col_name!r})"
        if model is None and system is None:
            raise _err(name, key, "names neither `model` (computed) nor `paper` (quoted)")
        if col_name in {c.name for c in columns}:
            raise _err(name, f"{key}.name", f"duplicated column name {col_name!r}")
        if model is not None:
            problem = check_model_template(str(model))
            if problem:
                raise _err(name, f"{key}.model", problem)
        if paper is not None and system is not None:
            _check_paper_column(name, key, str(system), model is None, systems, blocks, datasets)
        columns.append(
            Column(
                col_name,
                None if model is None else str(model),
                None if system is None else str(system),
            )
        )

    parsed = TableSpec(
        name=name,
        caption=str(spec.get("caption") or name),
        paper_table=paper_table,
        blocks=tuple(blocks),
        datasets=datasets,
        averages=tuple(averages),
        best_on_exclude=best_on_exclude,
        columns=tuple(columns),
    )
    wide = [n for c in parsed.columns for n in parsed.wide_names(c)]
    clashes = sorted({n for n in wide if wide.count(n) > 1} | ({"metric", "dataset"} & set(wide)))
    if clashes:
        raise _err(name, "columns", f"names give clashing CSV columns {clashes}")
    return parsed


# --------------------------------------------------------------------------- metrics input


def read_metrics(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate data-set level metrics parquet files (one per model and data set)."""
    frames = [read_table(p) for p in paths]
    if not frames:
        return pd.DataFrame(columns=[*_METRICS_REQUIRED, *_METRICS_OPTIONAL])
    return pd.concat(frames, ignore_index=True)


def _index_metrics(metrics: pd.DataFrame) -> dict[tuple[str, str, str], dict]:
    missing = [c for c in _METRICS_REQUIRED if c not in metrics.columns]
    if missing:
        raise InputError(f"metrics table is missing columns {missing}")
    index: dict[tuple[str, str, str], dict] = {}
    for rec in metrics.to_dict("records"):
        key = (str(rec["model"]), str(rec["dataset"]), str(rec["metric"]))
        if key in index:
            raise InputError(f"metrics table has two rows for model/dataset/metric {key}")
        value = rec["value"]
        if value is None or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
            raise InputError(f"metric value {value!r} for {key} is not a fraction in [0, 1]")
        index[key] = rec
    return index


def _absent(value: Any) -> bool:
    """None, NaN or pd.NA: pandas uses all three for an empty cell."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _opt(rec: Mapping, key: str) -> Any:
    value = rec.get(key)
    if _absent(value):
        return None
    return int(value) if key == "n_queries" else str(value)


# --------------------------------------------------------------------------- building


def _nan(x: float | None) -> bool:
    return x is None or math.isnan(x)


def round1(x: float | None) -> float:
    """The displayed value: one decimal, NaN for an empty cell."""
    return math.nan if _nan(x) else round(float(x), 1)


def best_on_counts(
    cells: Mapping[str, Sequence[float | None]],
    system_of: Mapping[str, str],
    rivals: Mapping[str, Sequence[float | None]] | None = None,
) -> dict[str, int]:
    """Per column, on how many rows it is the best (after rounding to 0.1).

    `cells` maps a column to its values on the counted data sets (None/NaN: does not
    compete). Each column is compared with `rivals` (default: `cells`): the values other
    columns compete with, here the paper's printed ones, so that a computed column never
    competes with another computed column. Columns of the same system do not compete;
    ties credit every tied column.
    """
    rivals = cells if rivals is None else rivals
    names = list(cells)
    counts = dict.fromkeys(names, 0)
    n_rows = {len(v) for v in (*cells.values(), *rivals.values())}
    if len(n_rows) > 1:
        raise ValueError("every column needs one value per counted data set")
    for i in range(n_rows.pop() if n_rows else 0):
        shown = {c: round1(cells[c][i]) for c in names}
        against = {o: round1(rivals[o][i]) for o in rivals}
        for c in names:
            if math.isnan(shown[c]):
                continue
            others = [
                v for o, v in against.items() if system_of[o] != system_of[c] and not math.isnan(v)
            ]
            if all(shown[c] >= r for r in others):
                counts[c] += 1
    return counts


def _cell(spec: TableSpec, block: Block, row: str, row_kind: str, col: Column, **kw) -> dict:
    rec = dict.fromkeys(LONG_COLUMNS)
    rec.update(
        table=spec.name,
        block=block.metric,
        metric=block.metric,
        row=row,
        row_kind=row_kind,
        column=col.name,
        column_kind="computed" if col.computed else "quoted",
        model=col.model,
        paper_system=col.paper,
        value=math.nan,
        paper_value=math.nan,
        diff=math.nan,
    )
    rec.update(kw)
    return rec


def _joined(values: Iterable[Any]) -> str | None:
    found = sorted({str(v) for v in values if not _absent(v)})
    return ";".join(found) if found else None


def _dataset_cell(
    spec: TableSpec, block: Block, ds: str, col: Column, index: Mapping, paper: Mapping | None
) -> dict:
    quoted = paper_cell(paper, col.paper, block.metric, ds) if col.paper else None
    paper_value = math.nan if quoted is None else quoted
    if not col.computed:
        return _cell(
            spec, block, ds, "dataset", col, source="paper", value=quoted, paper_value=paper_value
        )
    used, model = block.metric_for(ds), col.model_for(ds)
    rec = _cell(spec, block, ds, "dataset", col, metric=used, paper_value=paper_value, model=model)
    found = index.get((model, ds, used))
    if found is None:
        rec["source"] = "missing"
        return rec
    value = 100.0 * float(found["value"])
    rec.update(source="computed", value=value, diff=value - paper_value)
    rec.update({k: _opt(found, k) for k in _METRICS_OPTIONAL})
    return rec


def _summary_cell(
    spec: TableSpec,
    block: Block,
    row: str,
    row_kind: str,
    col: Column,
    paper: Mapping | None,
    computed: float | None,
) -> dict:
    """An average or "Best on" cell: the paper's report if quoted, else `computed`."""
    reported = (
        paper_reported(paper, col.paper, spec.paper_table, block.metric, row) if col.paper else None
    )
    paper_value = math.nan if reported is None else reported
    rec = _cell(spec, block, row, row_kind, col, paper_value=paper_value)
    if not col.computed:
        rec.update(source="missing" if reported is None else "paper", value=reported)
    elif computed is None:
        rec["source"] = "missing"
    else:
        rec.update(source="computed", value=computed, diff=computed - paper_value)
    return rec


def _best_on_cells(
    spec: TableSpec, block: Block, cells: Mapping[tuple[str, str], dict], paper: Mapping | None
) -> list[dict]:
    """The "Best on" row: each computed column against the paper's printed values of the
    other systems shown (see the module docstring); quoted columns give the paper's count."""
    counted = [d for d in spec.datasets if d not in spec.best_on_exclude]
    printed = {
        c.name: [cells[(c.name, d)]["paper_value"] for d in counted]
        for c in spec.columns
        if c.paper is not None
    }
    if all(_nan(v) for vals in printed.values() for v in vals):
        printed = {}  # nothing printed to compare with: computed columns rank each other
    values = {c.name: [cells[(c.name, d)]["value"] for d in counted] for c in spec.columns}
    counts = best_on_counts(values, {c.name: c.system for c in spec.columns}, printed or None)

    def complete(names: Iterable[str]) -> bool:
        return all(
            cells[(n, d)]["source"] != "missing" for n, d in itertools.product(names, counted)
        )

    everyone = complete(c.name for c in spec.columns)
    rows = []
    for col in spec.columns:
        ok = complete([col.name]) if printed else everyone
        count = float(counts[col.name]) if ok else None
        rows.append(_summary_cell(spec, block, BEST_ON, "best_on", col, paper, count))
    return rows


def build_long(
    name: str, spec: Mapping | TableSpec, metrics: pd.DataFrame, paper: Mapping | None
) -> pd.DataFrame:
    """One row per table cell, with where its number comes from (see the module docstring)."""
    spec = spec if isinstance(spec, TableSpec) else parse_table_spec(name, spec, paper)
    if paper is None and any(c.paper is not None for c in spec.columns):
        raise InputError(f"tables.{name}: columns name paper systems but no paper results given")
    index = _index_metrics(metrics)
    rows: list[dict] = []
    for block in spec.blocks:
        cells = {
            (col.name, ds): _dataset_cell(spec, block, ds, col, index, paper)
            for ds in spec.datasets
            for col in spec.columns
        }
        rows.extend(cells.values())

        for avg in spec.averages:
            kept = [d for d in spec.datasets if d not in avg.exclude]
            for col in spec.columns:
                own = [cells[(col.name, d)] for d in kept]
                complete = all(c["source"] == "computed" for c in own)
                mean = sum(c["value"] for c in own) / len(own) if complete else None
                rec = _summary_cell(spec, block, avg.name, "average", col, paper, mean)
                if rec["source"] == "computed":
                    rec["config_hash"] = _joined(c["config_hash"] for c in own)
                    rec["code_version"] = _joined(c["code_version"] for c in own)
                rows.append(rec)

        if spec.best_on_exclude is not None:
            rows.extend(_best_on_cells(spec, block, cells, paper))

    long = pd.DataFrame(rows, columns=LONG_COLUMNS)
    for col in ("value", "paper_value", "diff"):
        long[col] = pd.to_numeric(long[col], errors="coerce").astype("float64")
    long["n_queries"] = pd.to_numeric(long["n_queries"], errors="coerce").astype("Int64")
    return long


def _shown_diff(value: float, paper_value: float) -> float:
    """Difference of the displayed numbers, so "49.9 (paper 49.8, +0.1)" always adds up."""
    if _nan(value) or _nan(paper_value):
        return math.nan
    return round(round1(value) - round1(paper_value), 1)


def to_wide(long: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The paper's shape for the CSV: rows are data sets, averages, "Best on"."""
    cells = {(r["block"], r["row"], r["column"]): r for r in long.to_dict("records")}
    records = []
    for block in spec.blocks:
        row_names = [*spec.datasets, *(a.name for a in spec.averages)]
        if spec.best_on_exclude is not None:
            row_names.append(BEST_ON)
        for row in row_names:
            out: dict[str, Any] = {}
            if len(spec.blocks) > 1:
                out["metric"] = block.metric
            out["dataset"] = row
            for col in spec.columns:
                cell = cells[(block.metric, row, col.name)]
                names = spec.wide_names(col)
                out[names[0]] = round1(cell["value"])
                if len(names) == 3:
                    out[names[1]] = round1(cell["paper_value"])
                    out[names[2]] = _shown_diff(cell["value"], cell["paper_value"])
            records.append(out)
    return pd.DataFrame(records)


# --------------------------------------------------------------------------- CSV

CSV_COMMENT = "#"
CSV_NOTE = (
    'Values x100, one decimal; "X [paper]": quoted from the paper; "X [diff]": X minus '
    'the paper value as shown; empty: not reported, or not computed yet; "Best on": number '
    "of data sets. Details in the .md, per-cell provenance in the .parquet."
)


def csv_comment_lines(caption: str, label: str = "", note: str = "") -> str:
    """The lines that open a CSV: `# [label] caption` and `# note`, each line of a
    multi-line text prefixed with `#`. pandas reads the file with
    `pd.read_csv(path, comment="#")`; R with `read.csv(path, comment.char="#")`."""
    title = f"[{label}] {caption}" if label else caption
    lines = [line for text in (title, note) if text for line in str(text).splitlines()]
    return "".join(f"{CSV_COMMENT} {line}\n" for line in lines)


def _csv_number(value: Any, integer: bool) -> str:
    if _absent(value):
        return ""
    return f"{int(round(float(value)))}" if integer else f"{round1(value):.1f}"


def to_csv_text(wide: pd.DataFrame, caption: str, label: str = "") -> str:
    """The wide table as CSV text, after comment lines with its caption and label: values
    with one decimal, "Best on" counts as integers, empty cells empty."""
    shown = wide.astype(object)
    integer = wide["dataset"] == BEST_ON
    for col in wide.columns:
        if col not in ("metric", "dataset"):
            shown[col] = [_csv_number(v, i) for v, i in zip(wide[col], integer, strict=True)]
    return csv_comment_lines(caption, label, CSV_NOTE) + shown.to_csv(index=False)


# --------------------------------------------------------------------------- markdown


def _fmt(x: float, integer: bool) -> str:
    if _nan(x):
        return "-"
    return f"{int(round(x))}" if integer else f"{round1(x):.1f}"


def _fmt_diff(d: float, integer: bool) -> str:
    if integer:
        return f"{int(round(d)):+d}"
    text = f"{d:+.1f}"
    return "+0.0" if text == "-0.0" else text


def _md_cell(cell: Mapping, integer: bool) -> str:
    value, paper_value = cell["value"], cell["paper_value"]
    if cell["column_kind"] == "quoted":
        return "-" if _nan(value) else f"{_fmt(value, integer)}{QUOTED_MARK}"
    has_paper = not _nan(paper_value)
    if cell["source"] == "missing":
        return f"missing (paper {_fmt(paper_value, integer)})" if has_paper else "missing"
    if not has_paper:
        return _fmt(value, integer)
    diff = round(value - paper_value) if integer else _shown_diff(value, paper_value)
    shown, quoted = _fmt(value, integer), _fmt(paper_value, integer)
    return f"{shown} (paper {quoted}, {_fmt_diff(diff, integer)})"


def to_markdown(long: pd.DataFrame, spec: TableSpec, label: str = "") -> str:
    """A readable rendering: computed cells beside the paper's, quoted cells marked."""
    cells = {(r["block"], r["row"], r["column"]): r for r in long.to_dict("records")}
    title = f"[{label}] {spec.caption}" if label else spec.caption
    lines = [f"**{title}**", ""]
    overridden: dict[str, set[str]] = {}
    for block in spec.blocks:
        for ds, metric in block.overrides.items():
            overridden.setdefault(ds, set()).add(f"{block.label}: `{metric}`")
        if len(spec.blocks) > 1:
            lines += [f"*{block.label}*", ""]
        header = ["Dataset", *(c.name for c in spec.columns)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" + "---:|" * len(spec.columns))
        row_names = [*spec.datasets, *(a.name for a in spec.averages)]
        if spec.best_on_exclude is not None:
            row_names.append(BEST_ON)
        for row in row_names:
            shown_row = f"{row}{OVERRIDE_MARK}" if row in block.overrides else row
            line = [shown_row]
            for col in spec.columns:
                cell = cells[(block.metric, row, col.name)]
                line.append(_md_cell(cell, integer=row == BEST_ON))
            lines.append("| " + " | ".join(line) + " |")
        lines.append("")

    notes = [
        f"{QUOTED_MARK} quoted from the paper. Computed cells read "
        '"value (paper value, difference)"; "missing" means not computed yet.'
    ]
    if overridden:
        parts = [f"{ds} ({', '.join(sorted(m))})" for ds, m in sorted(overridden.items())]
        notes.append(
            f"{OVERRIDE_MARK} computed with a different metric, as the paper reports it: "
            + "; ".join(parts)
            + "."
        )
    for avg in spec.averages:
        left_out = ", ".join(avg.exclude) if avg.exclude else "nothing"
        notes.append(f"{avg.name}: mean over the data sets above, leaving out {left_out}.")
    if spec.best_on_exclude is not None:
        left_out = ", ".join(spec.best_on_exclude) if spec.best_on_exclude else "nothing"
        counted = long[(long["row_kind"] == "dataset") & ~long["row"].isin(spec.best_on_exclude)]
        if counted["paper_value"].notna().any():
            rule = (
                "a computed column competes with the values the paper printed for the other "
                "systems shown (never with another computed column); quoted columns give "
                "the paper's count."
            )
        else:
            rule = "nothing is quoted, so the computed columns compete with each other."
        notes.append(
            f"{BEST_ON}: data sets where the column is best (ties count for each), leaving "
            f"out {left_out}; {rule}"
        )
    computed = long[(long["source"] == "computed") & (long["row_kind"] == "dataset")]
    hashes = _joined(computed["config_hash"])
    versions = _joined(computed["code_version"])
    if computed.empty:
        notes.append("No computed cells yet.")
    else:
        n_runs = computed["run"].dropna().nunique()
        notes.append(
            f"Computed cells: {len(computed)} from {n_runs} run file(s); config hash "
            f"`{hashes or 'unknown'}`, code version `{versions or 'unknown'}`."
        )
    return "\n".join(lines) + "\n" + "\n\n".join(notes) + "\n"


# --------------------------------------------------------------------------- entry points


def build_table(
    name: str,
    spec: Mapping,
    metrics: pd.DataFrame,
    paper: Mapping | None,
    label: str = "",
) -> BuiltTable:
    """Long, wide, Markdown and CSV forms of one table spec."""
    parsed = parse_table_spec(name, spec, paper)
    long = build_long(name, parsed, metrics, paper)
    wide = to_wide(long, parsed)
    return BuiltTable(
        long, wide, to_markdown(long, parsed, label), to_csv_text(wide, parsed.caption, label)
    )


def write_table_outputs(
    built: BuiltTable, csv_path: str | Path, parquet_path: str | Path, md_path: str | Path
) -> None:
    """Write the CSV (wide), parquet (long) and Markdown files, each atomically."""
    write_text(built.csv, csv_path)
    write_table(built.long, parquet_path)
    write_text(built.markdown, md_path)
