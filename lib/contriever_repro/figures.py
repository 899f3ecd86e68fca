"""Grouped bar charts of one metric per data set (paper Figure 1: unsupervised Recall@100).

Figure spec (one entry of `figures:` in the config)::

    caption: "Unsupervised Recall@100 on BEIR (paper Figure 1)"
    paper_table: table11          # optional, as for tables
    metric: recall@100            # the quoted numbers' key
    metric_label: Recall@100      # optional axis label (default: the metric)
    metric_overrides: {trec-covid: recall_cap@100}
    datasets: [msmarco, trec-covid, ...]     # groups, left to right
    columns:                                 # bars within a group, as table columns
      - {name: BM25, paper: bm25}            # quoted: lighter and hatched
      - {name: Contriever, model: contriever, paper: contriever}   # computed: solid

Cells come from `tables.build_long`, so a bar means exactly what the table cell means.
A computed bar with a paper value gets a black tick at the paper's value; a missing
computed bar is marked "n/a" rather than drawn as zero.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .errors import InputError
from .io import atomic_path
from .tables import TableSpec, build_long, parse_table_spec

_FIGURE_KEYS = {
    "caption",
    "paper_table",
    "metric",
    "metric_label",
    "metric_overrides",
    "datasets",
    "columns",
}
_COLORS = matplotlib.colormaps["tab10"].colors


def parse_figure_spec(name: str, spec: Mapping, paper: Mapping | None) -> TableSpec:
    """Validate a figure spec; it is checked as a one-block table without averages."""
    if not isinstance(spec, Mapping):
        raise InputError(f"figures.{name}: expected a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _FIGURE_KEYS)
    if unknown:
        raise InputError(
            f"figures.{name}.spec: unknown key(s) {unknown}; allowed: {sorted(_FIGURE_KEYS)}"
        )
    if "metric" not in spec:
        raise InputError(f"figures.{name}.metric: required")
    block = {"metric": spec["metric"], "label": spec.get("metric_label")}
    if spec.get("metric_overrides"):
        block["metric_overrides"] = spec["metric_overrides"]
    table = {
        "caption": spec.get("caption") or name,
        "paper_table": spec.get("paper_table", name),
        "blocks": [block],
        "datasets": spec.get("datasets"),
        "columns": spec.get("columns"),
    }
    try:
        return parse_table_spec(name, table, paper)
    except InputError as exc:
        raise InputError(str(exc).replace(f"tables.{name}.", f"figures.{name}.", 1)) from exc


def figure_cells(
    name: str, spec: Mapping, data: pd.DataFrame, paper: Mapping | None = None
) -> pd.DataFrame:
    """The figure's cells: `data` is either a table's long form or a metrics frame."""
    parsed = parse_figure_spec(name, spec, paper)
    if {"row", "column", "block"} <= set(data.columns):
        block = parsed.blocks[0].metric
        cells = data[(data["block"] == block) & (data["row_kind"] == "dataset")]
        wanted = {(d, c.name) for d in parsed.datasets for c in parsed.columns}
        have = set(zip(cells["row"], cells["column"], strict=True))
        absent = sorted(wanted - have)
        if absent:
            raise InputError(f"figures.{name}: the table has no cells for {absent[:5]}")
        return cells
    return build_long(name, parsed, data, paper)


def figure1(
    data: pd.DataFrame,
    spec: Mapping,
    out_png: str | Path,
    paper: Mapping | None = None,
    label: str = "",
    name: str = "figure1",
) -> None:
    """Draw the grouped bar chart of `spec` to `out_png` (atomic, byte-for-byte repeatable)."""
    parsed = parse_figure_spec(name, spec, paper)
    cells = figure_cells(name, spec, data, paper)
    lookup = {(r["row"], r["column"]): r for r in cells.to_dict("records")}
    datasets, columns = list(parsed.datasets), list(parsed.columns)
    n = len(columns)
    width = 0.8 / n

    # A bare Figure on an Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(max(7.0, 0.75 * len(datasets) + 2.0), 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    handles = []
    has_paper_tick = False
    for j, col in enumerate(columns):
        color = _COLORS[j % len(_COLORS)]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(datasets))]
        values = [lookup[(d, col.name)]["value"] for d in datasets]
        heights = [0.0 if math.isnan(v) else v for v in values]
        style = (
            {"facecolor": color, "edgecolor": "black", "linewidth": 0.5}
            if col.computed
            else {"facecolor": color, "alpha": 0.45, "hatch": "///", "edgecolor": color}
        )
        ax.bar(xs, heights, width=width, **style)
        suffix = "computed here" if col.computed else "quoted from the paper"
        handles.append(Patch(label=f"{col.name} ({suffix})", **style))
        for x, d, v in zip(xs, datasets, values, strict=True):
            cell = lookup[(d, col.name)]
            if math.isnan(v) and cell["source"] == "missing":
                ax.text(x, 1.0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
            if col.computed and not math.isnan(cell["paper_value"]):
                ax.plot(
                    [x - width / 2, x + width / 2],
                    [cell["paper_value"]] * 2,
                    color="black",
                    linewidth=1.5,
                )
                has_paper_tick = True
    if has_paper_tick:
        handles.append(Line2D([], [], color="black", linewidth=1.5, label="paper value"))

    block = parsed.blocks[0]
    ylabel = f"{block.label} (x100)"
    if block.overrides:
        ylabel += "\n" + ", ".join(f"{d}: {m}" for d, m in sorted(block.overrides.items()))
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels(datasets, rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(datasets) - 0.5)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", linewidth=0.3)
    ax.set_axisbelow(True)
    title = f"{parsed.caption}\n[{label}]" if label else parsed.caption
    ax.set_title(textwrap.fill(title, 90, replace_whitespace=False), fontsize=9)
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.32),
        ncol=min(3, len(handles)),
        frameon=False,
    )
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
