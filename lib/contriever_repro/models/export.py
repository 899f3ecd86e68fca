"""A trained encoder as a folder that Hugging Face tools load the way this workflow uses it.

The folder is a plain `transformers` model (config, safetensors weights, tokenizer) and
a sentence-transformers model in its long-standing layout, which every version since
2.x reads:

  modules.json                     Transformer (the folder itself) -> Pooling
  sentence_bert_config.json        max_seq_length
  1_Pooling/config.json            mean over every token with attention mask 1, so
                                   [CLS] and [SEP] are included, as in Contriever
  config_sentence_transformers.json  similarity_fn_name "dot" (no normalisation)
  pretraining.json                 what produced the weights (config, data, steps)
  README.md                        the model card (`write_model_card`)

so `SentenceTransformer(folder).encode` gives this workflow's embeddings and scores
them with Contriever's dot product, where without these files sentence-transformers
falls back to mean pooling with *cosine* similarity.

Contriever has no pooler, but BERT-like `AutoModel` classes build one and report it
"MISSING" (randomly initialised) when the file lacks it. The export writes the pooler
with all-zero weights instead: every weight then loads from the file, nothing is random,
and `pooler_output` is visibly zero rather than plausible noise. Use mean pooling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..io import atomic_dir, read_table, write_text

METADATA_FILE = "pretraining.json"
CARD_FILE = "README.md"
MAX_SEQ_LENGTH = 512  # Contriever encodes queries and passages with 512 tokens
# The paper reports nDCG@10 and Recall@100; these come first in the card's table.
CARD_METRICS = ("ndcg@10", "recall@100")


def _module_files(dim: int, max_seq_length: int) -> dict[str, Any]:
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ],
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },  # only the keys every version knows (older ones refuse unknown keys)
        "config_sentence_transformers.json": {
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "dot",
        },
    }


def _with_zero_pooler(model):
    """`model`'s weights in a fresh model of its class built *with* its pooler (if the
    architecture has one), the pooler set to zeros; any other difference is an error."""
    import torch
    from transformers import AutoModel

    full = AutoModel.from_config(model.config)
    missing, unexpected = full.load_state_dict(model.state_dict(), strict=False)
    wrong = [k for k in missing if not k.startswith("pooler.")] + list(unexpected)
    if wrong:
        raise InputError(f"export: the encoder's weights do not fit its architecture: {wrong}")
    with torch.no_grad():
        for name in missing:
            full.get_parameter(name).zero_()
    return full.float().eval()


def write_hf_folder(
    model,
    tokenizer,
    out_dir: str | Path,
    metadata: Mapping[str, Any],
    max_seq_length: int = MAX_SEQ_LENGTH,
) -> Path:
    """Write `model` (a plain HF encoder) and `tokenizer` as a Hugging Face and
    sentence-transformers folder with its model card, atomically."""
    full = _with_zero_pooler(model)
    config = full.config
    seq = min(max_seq_length, getattr(config, "max_position_embeddings", max_seq_length))
    size = sum(t.numel() * t.element_size() for t in full.state_dict().values())
    with atomic_dir(out_dir, needed=size + (16 << 20)) as tmp:
        full.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, content in _module_files(config.hidden_size, seq).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        (tmp / METADATA_FILE).write_text(
            json.dumps(dict(metadata), indent=1, sort_keys=True, default=str) + "\n",
            encoding="utf-8",
        )
        (tmp / CARD_FILE).write_text(model_card(tmp), encoding="utf-8")
    return Path(out_dir)


# --------------------------------------------------------------------------- model card


def _metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    if not path.is_file():
        raise InputError(f"no {METADATA_FILE}: not a folder exported by this workflow", folder)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON ({err})", path) from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _metrics_table(frames: list[pd.DataFrame]) -> str:
    df = pd.concat(frames, ignore_index=True)
    keys = [c for c in ("model", "dataset", "split") if c in df.columns]
    names = list(dict.fromkeys(df["metric"]))
    order = [m for m in CARD_METRICS if m in names] or names
    wide = df[df["metric"].isin(order)].pivot_table(
        index=keys, columns="metric", values="value", aggfunc="first"
    )
    wide = wide[order].reset_index().sort_values(keys)
    lines = [
        "| " + " | ".join(keys + order) + " |",
        "|" + "---|" * len(keys) + "---:|" * len(order),
    ]
    for row in wide.itertuples(index=False):
        cells = [str(v) for v in row[: len(keys)]]
        cells += ["" if math.isnan(v) else f"{100 * v:.1f}" for v in row[len(keys) :]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(folder: str | Path, metrics: Iterable[str | Path] = ()) -> str:
    """The model card (README.md text) of an exported folder, from its pretraining.json
    and, when given, the metric tables (this workflow's long-form parquet files)."""
    folder = Path(folder)
    meta = _metadata(folder)
    cfg = meta.get("config") or {}
    name = meta.get("name", folder.name)
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    seq = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
    dim = pooling["word_embedding_dimension"]
    sources = cfg.get("sources") or []
    out = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags:",
        "- sentence-transformers",
        "- feature-extraction",
        "- dense-retrieval",
        "- contriever",
        "---",
        "",
        f"# {name}",
        "",
        "A dense retriever pre-trained without supervision by contrastive learning, "
        "reproducing Contriever (Izacard et al., 2022, arXiv:2112.09118) with the "
        "contriever-repro workflow. Queries and passages share one encoder; the "
        "embedding is the mean of the last hidden states over all tokens ([CLS] and "
        "[SEP] included), not normalised, and relevance is the dot product.",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")',
        'q = model.encode(["where was marie curie born?"])',
        'p = model.encode(["Maria Sklodowska was born in Warsaw."])',
        "scores = model.similarity(q, p)  # dot product",
        "```",
        "",
        f"Embeddings have {dim} dimensions; inputs are truncated to "
        f"{seq['max_seq_length']} tokens. With `transformers` alone, average "
        "`last_hidden_state` over the attention mask; `pooler_output` is not part of "
        "this model (its weights are written as zeros so that every weight loads from "
        "the file).",
        "",
        "## Training",
        "",
        f"- initial model: `{meta.get('init', '?')}`",
        f"- steps: {meta.get('step', '?')} of {meta.get('steps', '?')}",
        f"- processes: {meta.get('world_size', '?')}, global batch: "
        f"{meta.get('global_batch', '?')}",
        f"- data: {', '.join(f'`{s}`' for s in sources) or '?'}",
        "",
        "Training configuration (`pretraining.json` holds it in full):",
        "",
        "| key | value |",
        "|---|---|",
        *(f"| {k} | `{_fmt(v)}` |" for k, v in sorted(cfg.items())),
        "",
        "## Evaluation",
        "",
    ]
    paths = [Path(p) for p in metrics]
    if paths:
        out += [
            "Measured by the workflow (values × 100; BEIR evaluation, "
            f"{', '.join(p.name for p in paths[:3])}{' …' if len(paths) > 3 else ''}):",
            "",
            _metrics_table([read_table(p) for p in paths]),
        ]
    else:
        out.append("Not evaluated yet: `write_model_card(folder, metrics)` adds the numbers.")
    return "\n".join(out) + "\n"


def write_model_card(
    folder: str | Path, metrics: Iterable[str | Path] = (), out: str | Path | None = None
) -> Path:
    """(Re)write the model card of an exported folder, with the evaluation numbers of
    the given metric tables; to `out` if given, else the folder's README.md."""
    path = Path(out) if out is not None else Path(folder) / CARD_FILE
    write_text(model_card(folder, metrics), path)
    return path
