"""Paper figures: grouped bars per data set (Figure 1) and queue-size sweeps (Figure 2).

`kind:` selects the figure type; `bars` is the default.

Bars (paper Figure 1: unsupervised Recall@100), one entry of `figures:` in the config::

    kind: bars                    # optional
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

Queue sweep (paper Figure 2: nDCG@10 averaged over BEIR against the MoCo queue size)::

    kind: queue_sweep
    caption: "Impact of the number of negatives (paper Figure 2)"
    metric: ndcg@10
    metric_label: nDCG@10                    # optional (default: the metric)
    datasets: [nfcorpus, nq, ...]            # each point is the mean over these
    x_label: "Queue size (negatives)"        # optional (this is the default)
    series:                                  # one line each, in legend order
      - name: "MoCo, no fine-tuning"
        points: [{x: 2048, model: queue-2048}, {x: 8192, model: queue-8192}]
      - name: "MoCo + MS MARCO fine-tuning"
        points: [{x: 2048, model: queue-2048-msmarco}, ...]

A point is the table "Avg." of its model over `datasets` (mean of the unrounded x100
values, via `tables.build_long`): with any data set missing the point is missing, drawn
as a gap with an "x" on the axis, never a mean over fewer data sets. The x axis is log2
with ticks at the given x values, labelled as the paper does (x // 1000: 2048 -> 2k,
32768 -> 32k, 131072 -> 131k). The paper prints Figure 2 only as a plot, so there are no
quoted numbers to draw beside the computed ones.

Both write the plotted numbers as CSV (x100, rounded to one decimal as the paper prints
them) after `#` lines with the caption and label, as the tables do. Titles break at
phrase boundaries; the layout is constrained, so no title, label or legend is clipped.
"""

from __future__ import annotations

import math
import numbers
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from ..errors import InputError
from ..io import atomic_path
from .tables import METRIC_FAMILIES, TableSpec, build_long, csv_comment_lines, parse_table_spec

FIGURE_KINDS = ("bars", "queue_sweep")
_FIGURE_KEYS = {
    "kind",
    "caption",
    "paper_table",
    "metric",
    "metric_label",
    "metric_overrides",
    "datasets",
    "columns",
}
_SWEEP_KEYS = {"kind", "caption", "metric", "metric_label", "datasets", "x_label", "series"}
_SERIES_KEYS = {"name", "points"}
_POINT_KEYS = {"x", "model"}
SWEEP_CSV_COLUMNS = ["series", "x", "model", "value", "n_datasets"]
BARS_CSV_COLUMNS = [
    "dataset",
    "column",
    "model",
    "paper_system",
    "metric",
    "source",
    "value",
    "paper_value",
]
_COLORS = matplotlib.colormaps["tab10"].colors
TITLE_FONTSIZE = 9
# Where a long title may break, best first: after a colon, before "vs", before a
# parenthesis, after a semicolon or comma (a line then ends or starts a phrase).
_TITLE_BREAKS = ((": ", 2), (" vs ", 1), (" (", 1), ("; ", 2), (", ", 2))
BARS_CSV_NOTE = (
    "Values x100, rounded to one decimal; source: computed here, paper (quoted) or "
    "missing (not computed yet); paper_value: the paper's number for that system."
)
SWEEP_CSV_NOTE = (
    "value: mean over the data sets of the metric x100, rounded to one decimal; empty "
    "when any data set is missing; n_datasets: how many are computed."
)
_MARKERS = ("o", "s", "^", "D", "v", "P")
_METRIC_RE = re.compile(rf"({'|'.join(METRIC_FAMILIES)})@[1-9][0-9]*")


def title_lines(text: str, width: int) -> list[str]:
    """Split a title into lines of at most `width` characters, breaking at a phrase
    boundary (see _TITLE_BREAKS) rather than mid-phrase; explicit newlines are kept.
    A phrase longer than `width` falls back to breaking between words."""
    out: list[str] = []
    for line in text.splitlines() or [""]:
        while len(line) > width:
            cut = None
            for sep, keep in _TITLE_BREAKS:
                at = line.rfind(sep, 0, width + 1)
                if at >= width // 4:  # a first line that is not a stub
                    cut = (line[: at + keep].rstrip(), line[at + keep :].lstrip())
                    break
            if cut is None:
                head, *_ = textwrap.wrap(line, width, break_long_words=False) or [line]
                cut = (head, line[len(head) :].lstrip())
            if not cut[1]:
                break
            out.append(cut[0])
            line = cut[1]
        out.append(line)
    return out


def _title(fig: Figure, caption: str, label: str) -> str:
    """Caption, then the label on its own line, wrapped to the figure's width."""
    # Average glyph width of DejaVu Sans is about 0.6 em.
    width = int(fig.get_figwidth() * 72 / (TITLE_FONTSIZE * 0.6))
    lines = title_lines(caption, width)
    if label:
        lines += title_lines(f"[{label}]", width)
    return "\n".join(lines)


def _fitting_legend(fig: Figure, handles: list, **kwargs):
    """A legend below the axes, outside them, with as many columns as fit the figure's
    width (constrained layout then makes room for it, so it is never clipped)."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, **kwargs)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.96 * fig.bbox.width:
            return legend
        legend.remove()
    return None


def _write_csv(frame: pd.DataFrame, out_csv: str | Path, caption: str, label: str, note: str):
    """The plotted numbers, after `#` lines with the caption and label (as the tables)."""
    with atomic_path(out_csv) as tmp:
        tmp.write_text(
            csv_comment_lines(caption, label, note) + frame.to_csv(index=False),
            encoding="utf-8",
        )


def figure_kind(name: str, spec: Any) -> str:
    """The figure type a spec asks for (`kind:`, default "bars")."""
    if not isinstance(spec, Mapping):
        raise InputError(f"figures.{name}: expected a mapping, got {type(spec).__name__}")
    kind = spec.get("kind", "bars")
    if kind not in FIGURE_KINDS:
        raise InputError(f"figures.{name}.kind: unknown kind {kind!r}; known: {list(FIGURE_KINDS)}")
    return kind


def parse_figure_spec(name: str, spec: Mapping, paper: Mapping | None) -> TableSpec:
    """Validate a bars figure spec; it is checked as a one-block table without averages."""
    if figure_kind(name, spec) != "bars":
        raise InputError(f"figures.{name}.kind: {spec['kind']!r} is not a bar chart")
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
    out_csv: str | Path | None = None,
) -> None:
    """Draw the grouped bar chart of `spec` to `out_png` (atomic, byte-for-byte repeatable).

    With `out_csv`, also write the drawn cells (x100, rounded to one decimal as the
    paper prints them) so the bars can be read as numbers.
    """
    parsed = parse_figure_spec(name, spec, paper)
    cells = figure_cells(name, spec, data, paper)
    lookup = {(r["row"], r["column"]): r for r in cells.to_dict("records")}
    datasets, columns = list(parsed.datasets), list(parsed.columns)
    n = len(columns)
    width = 0.8 / n

    # A bare Figure on an Agg canvas: no pyplot global state, no display needed. The
    # constrained layout keeps the title, tick labels and the legend below inside it.
    fig = Figure(figsize=(max(7.0, 0.75 * len(datasets) + 2.0), 5.5), dpi=100, layout="constrained")
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
        # The column's own name: what "solid" and "hatched" mean is the legend's title.
        handles.append(Patch(label=col.name, **style))
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
    ax.set_title(_title(fig, parsed.caption, label), fontsize=TITLE_FONTSIZE)
    key = []
    if any(c.computed for c in columns):
        key.append("solid: computed here")
    if not all(c.computed for c in columns):
        key.append("hatched: quoted from the paper")
    _fitting_legend(
        fig,
        handles,
        title="; ".join(key),
        title_fontsize=7,
        fontsize=7,
        frameon=False,
    )
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    if out_csv is not None:
        drawn = cells.rename(columns={"row": "dataset"})[BARS_CSV_COLUMNS].copy()
        drawn[["value", "paper_value"]] = drawn[["value", "paper_value"]].round(1)
        _write_csv(drawn, out_csv, parsed.caption, label, BARS_CSV_NOTE)


# --------------------------------------------------------------------------- queue sweep


@dataclass(frozen=True)
class SweepPoint:
    x: int | float
    model: str


@dataclass(frozen=True)
class SweepSeries:
    name: str
    points: tuple[SweepPoint, ...]  # sorted by x


@dataclass(frozen=True)
class QueueSweepSpec:
    """A validated `kind: queue_sweep` spec (see the module docstring for the YAML form)."""

    name: str
    caption: str
    metric: str
    metric_label: str
    datasets: tuple[str, ...]
    x_label: str
    series: tuple[SweepSeries, ...]


def _sweep_keys(where: str, obj: Any, allowed: set[str]) -> Mapping:
    if not isinstance(obj, Mapping):
        raise InputError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return obj


def _nonempty_list(where: str, value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: required and must be a non-empty list")
    return value


def parse_queue_sweep_spec(name: str, spec: Mapping) -> QueueSweepSpec:
    """Validate a queue-sweep spec; every error names the offending key."""
    where = f"figures.{name}"
    if figure_kind(name, spec) != "queue_sweep":
        raise InputError(f"{where}.kind: expected 'queue_sweep'")
    _sweep_keys(where, spec, _SWEEP_KEYS)
    metric = spec.get("metric")
    if not isinstance(metric, str) or not _METRIC_RE.fullmatch(metric):
        raise InputError(
            f"{where}.metric: required, <family>@<k> with family in {list(METRIC_FAMILIES)}; "
            f"got {metric!r}"
        )
    datasets = _nonempty_list(f"{where}.datasets", spec.get("datasets"))
    if not all(isinstance(d, str) and d for d in datasets):
        raise InputError(f"{where}.datasets: expected data-set names")
    if len(set(datasets)) != len(datasets):
        raise InputError(f"{where}.datasets: duplicated data set in {datasets}")

    series: list[SweepSeries] = []
    for i, raw in enumerate(_nonempty_list(f"{where}.series", spec.get("series"))):
        s_where = f"{where}.series[{i}]"
        raw = _sweep_keys(s_where, raw, _SERIES_KEYS)
        s_name = raw.get("name")
        if not isinstance(s_name, str) or not s_name:
            raise InputError(f"{s_where}.name: required")
        if s_name in {s.name for s in series}:
            raise InputError(f"{s_where}.name: duplicated series name {s_name!r}")
        if "#" in s_name:
            raise InputError(
                f"{s_where}.name: {s_name!r}: '#' is not allowed (it starts a comment in the CSV)"
            )
        points: list[SweepPoint] = []
        for j, point in enumerate(_nonempty_list(f"{s_where}.points", raw.get("points"))):
            p_where = f"{s_where}.points[{j}]"
            point = _sweep_keys(p_where, point, _POINT_KEYS)
            x, model = point.get("x"), point.get("model")
            if (
                isinstance(x, bool)
                or not isinstance(x, numbers.Real)
                or not math.isfinite(x)
                or x <= 0
            ):
                raise InputError(f"{p_where}.x: expected a positive number, got {x!r}")
            if x in {p.x for p in points}:
                raise InputError(f"{p_where}.x: duplicate x {x!r} in series {s_name!r}")
            if not isinstance(model, str) or not model:
                raise InputError(f"{p_where}.model: required")
            points.append(SweepPoint(x, model))
        series.append(SweepSeries(s_name, tuple(sorted(points, key=lambda p: p.x))))

    return QueueSweepSpec(
        name=name,
        caption=str(spec.get("caption") or name),
        metric=metric,
        metric_label=str(spec.get("metric_label") or metric),
        datasets=tuple(datasets),
        x_label=str(spec.get("x_label") or "Queue size (negatives)"),
        series=tuple(series),
    )


def queue_sweep_points(name: str, spec: Mapping, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per point: series, x, model, value (x100, unrounded; NaN if any data set is
    missing) and n_datasets (how many of `datasets` the model has).

    The value is a table "Avg." cell, so a point means exactly what a table average means.
    """
    parsed = parse_queue_sweep_spec(name, spec)
    points = [(s, p) for s in parsed.series for p in s.points]
    table = {
        "blocks": [{"metric": parsed.metric}],
        "datasets": list(parsed.datasets),
        "averages": [{"name": "Avg.", "exclude": []}],
        "columns": [{"name": f"point{k}", "model": p.model} for k, (_, p) in enumerate(points)],
    }
    long = build_long(name, table, metrics, None)
    rows = []
    for k, (series, point) in enumerate(points):
        own = long[long["column"] == f"point{k}"]
        avg = own[own["row_kind"] == "average"].iloc[0]
        found = own[(own["row_kind"] == "dataset") & (own["source"] == "computed")]
        value = float(avg["value"]) if avg["source"] == "computed" else math.nan
        rows.append(
            {
                "series": series.name,
                "x": point.x,
                "model": point.model,
                "value": value,
                "n_datasets": len(found),
            }
        )
    return pd.DataFrame(rows, columns=SWEEP_CSV_COLUMNS)


def _tick_labels(xs: list) -> list[str]:
    """The paper's labels (2048 -> 2k, 131072 -> 131k); full numbers if two would clash."""
    labels = [f"{int(x) // 1000}k" if x >= 1000 and float(x).is_integer() else f"{x:g}" for x in xs]
    if len(set(labels)) < len(labels):
        labels = [f"{x:g}" if not float(x).is_integer() else str(int(x)) for x in xs]
    return labels


def queue_sweep_figure(
    data: pd.DataFrame,
    spec: Mapping,
    out_png: str | Path,
    out_csv: str | Path | None = None,
    label: str = "",
    name: str = "figure2",
) -> pd.DataFrame:
    """Draw the metric averaged over `datasets` against the queue size, one line per series.

    Writes `out_png` (and `out_csv`, the plotted numbers) atomically and byte-for-byte
    repeatably; returns the plotted numbers.
    """
    parsed = parse_queue_sweep_spec(name, spec)
    points = queue_sweep_points(name, spec, data)

    fig = Figure(figsize=(7.0, 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_xscale("log", base=2)
    has_missing = False
    for i, series in enumerate(parsed.series):
        color, marker = _COLORS[i % len(_COLORS)], _MARKERS[i % len(_MARKERS)]
        own = points[points["series"] == series.name]
        xs, ys = list(own["x"]), list(own["value"])
        # NaN breaks the line: a missing point is a gap, never interpolated.
        ax.plot(xs, ys, color=color, marker=marker, linewidth=1.5, label=series.name)
        gaps = [x for x, y in zip(xs, ys, strict=True) if math.isnan(y)]
        if gaps:
            has_missing = True
            ax.plot(
                gaps,
                [0.03] * len(gaps),
                transform=ax.get_xaxis_transform(),
                linestyle="none",
                marker="x",
                markersize=8,
                color=color,
                clip_on=False,
            )

    ticks = sorted({p.x for s in parsed.series for p in s.points})
    ax.set_xticks(ticks, _tick_labels(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
    else:
        ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
    if points["value"].isna().all():
        ax.set_ylim(0, 100)
    else:
        ax.margins(y=0.15)
    ax.set_xlabel(parsed.x_label, fontsize=9)
    n = len(parsed.datasets)
    ylabel = f"{parsed.metric_label} (x100), mean over {n} data sets"
    # Wrapped to the axes' height (about 3.5 of the figure's 5 inches).
    ax.set_ylabel("\n".join(title_lines(ylabel, int(3.5 * 72 / (9 * 0.6)))), fontsize=9)
    ax.grid(linewidth=0.3)
    ax.set_axisbelow(True)
    ax.set_title(_title(fig, parsed.caption, label), fontsize=TITLE_FONTSIZE)
    handles, _ = ax.get_legend_handles_labels()
    if has_missing:
        handles.append(
            Line2D(
                [],
                [],
                color="gray",
                marker="x",
                linestyle="none",
                label="missing (a data set is not computed)",
            )
        )
    ax.legend(handles=handles, fontsize=8, loc="best")
    # A figure-level x label, so the constrained layout makes room for it.
    fig.supxlabel(
        textwrap.fill("Data sets: " + ", ".join(parsed.datasets), 150),
        fontsize=6,
        x=0.01,
        ha="left",
    )

    if out_csv is not None:
        _write_csv(points.round({"value": 1}), out_csv, parsed.caption, label, SWEEP_CSV_NOTE)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return points
