"""What the mined hard negatives look like, for a person to check before phase 2.

Mining with a first-round model is known to pick up unjudged relevant passages (false
negatives); the report shows how many negatives score above the query's judged
positive, where in the ranking the negatives come from, and a few texts to read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_path, write_text

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
EXAMPLE_CHARS = 200


def _cut(text: str, limit: int = EXAMPLE_CHARS) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _quantile_table(values: pd.Series, label: str) -> list[str]:
    if values.empty:
        return [f"No {label} values.", ""]
    qs = values.quantile(list(QUANTILES))
    head = "| " + " | ".join(f"q{int(q * 100)}" for q in QUANTILES) + " | mean |"
    rule = "|" + "---|" * (len(QUANTILES) + 1)
    row = "| " + " | ".join(f"{v:.4g}" for v in qs) + f" | {values.mean():.4g} |"
    return [f"{label} ({len(values)} values):", "", head, rule, row, ""]


def above_positive(mined: pd.DataFrame) -> tuple[int, int]:
    """(negatives scoring above their query's best retrieved positive, negatives whose
    query had a positive within the mining depth)."""
    known = mined[mined["positive_score"].notna()]
    return int((known["score"] > known["positive_score"]).sum()), len(known)


def _plot(mined: pd.DataFrame, out_png: str | Path) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rank, ax_gap = fig.subplots(1, 2)
    if len(mined):
        top = int(mined["rank"].max())
        bins = np.arange(0.5, top + 1.5, max(1, math.ceil(top / 50)))
        ax_rank.hist(mined["rank"], bins=bins, color="tab:blue")
    ax_rank.set_xlabel("retrieval rank of the mined negative")
    ax_rank.set_ylabel("negatives")
    ax_rank.set_title("Rank of sampled negatives")
    gap = (mined["score"] - mined["positive_score"]).dropna()
    if len(gap):
        ax_gap.hist(gap, bins=50, color="tab:orange")
    ax_gap.axvline(0.0, color="black", linewidth=1)
    ax_gap.set_xlabel("negative score − best positive score")
    ax_gap.set_ylabel("negatives")
    ax_gap.set_title("Score gap to the positive (> 0: likely false negative)")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def mining_report(
    mined_df: pd.DataFrame,
    queries_df: pd.DataFrame,
    corpus_df: pd.DataFrame,
    records_df: pd.DataFrame,
    out_md: str | Path,
    out_png: str | Path,
    n_examples: int = 5,
    seed: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> dict:
    """Write the markdown report and the histogram figure; return the counted numbers.

    Queries mined are those of `records_df` (query_id, positive_ids); the requested
    number per query is `metadata["per_query"]` when given (None: all in the range).
    """
    metadata = dict(metadata or {})
    mined = mined_df
    record_qids = pd.unique(records_df["query_id"].astype(str))
    per_query_counts = mined.groupby("query_id").size()
    counts = pd.Series(record_qids).map(per_query_counts).fillna(0).astype(int)
    requested = metadata.get("per_query")
    fewer = int((counts < requested).sum()) if requested else int((counts == 0).sum())
    n_above, n_known = above_positive(mined)
    no_pos = int(mined["positive_score"].isna().sum())
    gap = (mined["score"] - mined["positive_score"]).dropna()

    lines = ["# Mined hard negatives", ""]
    if metadata:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(metadata.items())]
        lines.append("")
    fewer_what = f"fewer than {requested} negatives" if requested else "no negative"
    lines += [
        "## Counts",
        "",
        f"- queries: {len(record_qids)} (with at least one negative: {int((counts > 0).sum())})",
        f"- negatives: {len(mined)} (per query: mean {counts.mean() if len(counts) else 0:.2f},"
        f" min {counts.min() if len(counts) else 0}, max {counts.max() if len(counts) else 0})",
        f"- queries with {fewer_what}: {fewer}",
        "",
        "## Rank of the sampled negatives",
        "",
        *_quantile_table(mined["rank"].astype(float), "retrieval rank"),
        "## Score gap to the positive",
        "",
        "Negative score minus the best score of a judged positive of the query within the "
        "mining depth.",
        "",
        *_quantile_table(gap, "score gap"),
        "## Likely false negatives",
        "",
        f"- negatives scoring above their query's positive: {n_above} of {n_known}"
        f" ({100.0 * n_above / n_known if n_known else 0.0:.1f}%)",
        f"- negatives of queries whose positive was not retrieved within the depth "
        f"(all of these score above it): {no_pos}",
        "",
    ]

    text_of_query = dict(zip(queries_df["query_id"].astype(str), queries_df["text"], strict=True))
    titles, bodies = corpus_df["title"].tolist(), corpus_df["text"].tolist()
    doc_text = dict(
        zip(
            corpus_df["doc_id"].astype(str),
            (f"{t} {x}".strip() for t, x in zip(titles, bodies, strict=True)),
            strict=True,
        )
    )
    first_positive = {}
    record_rows = zip(records_df["query_id"].astype(str), records_df["positive_ids"], strict=True)
    for qid, ids in record_rows:
        if len(ids) and qid not in first_positive:
            first_positive[qid] = str(ids[0])
    lines += ["## Examples", ""]
    if len(mined) and n_examples > 0:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(mined), size=min(n_examples, len(mined)), replace=False))
        lines += ["| query | positive | negative (rank, score) |", "|---|---|---|"]
        for i in pick:
            row = mined.iloc[int(i)]
            qid = str(row["query_id"])
            pos = first_positive.get(qid)
            lines.append(
                f"| {_cut(text_of_query.get(qid, f'[{qid}]'))} "
                f"| {_cut(doc_text.get(pos, f'[{pos}]'))} "
                f"| {_cut(doc_text.get(str(row['doc_id']), '[' + str(row['doc_id']) + ']'))} "
                f"({int(row['rank'])}, {float(row['score']):.3f}) |"
            )
    else:
        lines.append("No negatives were mined.")
    lines.append("")
    _plot(mined, out_png)
    write_text("\n".join(lines), out_md)
    return {
        "queries": len(record_qids),
        "negatives": len(mined),
        "queries_with_fewer": fewer,
        "above_positive": n_above,
        "with_positive_score": n_known,
        "negatives_positive_not_retrieved": no_pos,
    }
