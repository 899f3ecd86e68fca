"""Benchmark: encoding cost of the 11 Mr. TyDi corpora, per language, from rates measured
on this CPU.

Why: Tables 4 and 15 evaluate 9 dense models on Mr. TyDi v1.1, whose 11 corpora hold 58.0M
passages (32.9M of them English). Each model encodes all of them, so before running the
multilingual work we want the cost per language, per encoding job and in total.

Passages: Mr. TyDi passages are Wikipedia paragraphs, taken here to be about 100 words
(--words). They are built from real text per language: consecutive sentences of
../shared/data/text/leipzig-sentences/<lang>.txt joined until the passage is closest to
100 words. Words are whitespace words where the script separates words by spaces (ar bn
en fi id ko ru sw te); Japanese has no spaces and Thai puts them between phrases, so there
a passage takes the number of characters that carries ~100 English words, from the ratio
of mean sentence lengths in these same corpora (English words per sentence / the
language's characters per sentence): an approximation, the corpora are not parallel.

Measured (one worker process, 2 threads by default): per language, MiniLM-L6 tokens per
passage (all-MiniLM-L6-v2's uncased English WordPiece, with retrieval.encode.tokenize at
max_length 512, specials included), the share that 512 truncates and the [UNK] share;
and passages/s and tokens/s of retrieval.encode.encode_texts (fp32, max_length 512,
mean pooling, the Mr. TyDi model settings' text normaliser) on --passages passages of
each language, timed separately per language after one warm-up batch. Passages/s are
per-language measurements, not derived from a pooled tokens/s.

MiniLM's tokenizer is not mBERT's: mBERT's 119k multilingual vocabulary keeps whole
subwords where MiniLM's English one falls back to single characters (Arabic, Bengali,
Korean, Russian; Finnish, Indonesian and Swahili split into more pieces too), so there
MiniLM counts over-estimate an mBERT-sized encoder's tokens. Where MiniLM has not even
the characters it maps a whole word to one [UNK] (most of Telugu, a third of Thai, part of
Japanese), and there its counts under-estimate: the [UNK] column says where.

Projected (not measured): Mr. TyDi v1.1 collection sizes (Zhang et al., 2021) x the
measured rates. CPU hours: MiniLM at the measured passages/s, and a BERT-base-sized
encoder (mContriever, mBERT: 12 layers, hidden 768) at the same sustained FLOP/s.
GPU hours: forward FLOPs per passage (2 x non-embedding parameters x tokens, plus
4 x layers x length^2 x hidden for attention, as bench_rerank) over an ASSUMED sustained
--gpu-tflops (default 100 TFLOP/s, fp16 on one A100/H100-class card); tokenisation and
I/O are not counted. Encoding jobs per language are the `shards` of the config's
`datasets` entries with `source: mrtydi` (about 500k passages each); the dense models
are the `model` columns of the config's tables table4 and table15.

    python bench/bench_mrtydi.py --out bench/out [--passages 48] [--gpu-tflops 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from bench_common import emit_result, minilm_path, peak_rss_mib, record_args, run_variant, utc_now
from bench_pretrain import _cpu_name, bert_base_params, param_counts
from bench_rerank import flops_per_pair

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "text" / "leipzig-sentences"
MAX_LENGTH = 512
# Mr. TyDi v1.1 collection sizes (Zhang et al., 2021), passages per language.
MRTYDI_PASSAGES = {
    "ar": 2_106_586,
    "bn": 304_059,
    "en": 32_907_100,
    "fi": 1_908_757,
    "id": 1_469_399,
    "ja": 7_000_027,
    "ko": 1_496_126,
    "ru": 9_597_504,
    "sw": 136_689,
    "te": 548_224,
    "th": 568_855,
}
# Scripts without spaces between words: passage length in characters (see docstring).
CHAR_LANGS = ("ja", "th")
TABLES = ("table4", "table15")
CITE = "Mr. TyDi v1.1 collection sizes (Zhang et al., 2021)"


# --------------------------------------------------------------------------- config


def read_config(path: Path) -> dict:
    """Encoding jobs per Mr. TyDi language and the dense models of Tables 4 and 15."""
    import yaml

    from contriever_repro.errors import InputError

    if not path.is_file():
        raise InputError("config file not found", path)
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    shards = {}
    for name, entry in (cfg.get("datasets") or {}).items():
        entry = entry or {}
        if entry.get("source") != "mrtydi":
            continue
        lang = entry.get("language")
        if lang not in MRTYDI_PASSAGES:
            raise InputError(f"datasets.{name}: language {lang!r} is not a Mr. TyDi one", path)
        shards[lang] = int(entry.get("shards", 1))
    missing = sorted(set(MRTYDI_PASSAGES) - set(shards))
    if missing:
        raise InputError(f"datasets: no `source: mrtydi` entry for {missing}", path)
    models = []
    for table in TABLES:
        columns = ((cfg.get("tables") or {}).get(table) or {}).get("columns")
        if not columns:
            raise InputError(f"tables.{table}: no columns", path)
        for col in columns:
            name = col.get("model")
            if name and name not in models:
                if name not in (cfg.get("models") or {}):
                    raise InputError(f"tables.{table}: model {name!r} not under models", path)
                models.append(name)
    return {"shards": {lang: shards[lang] for lang in MRTYDI_PASSAGES}, "dense_models": models}


# --------------------------------------------------------------------------- passages


def read_sentences(lang: str) -> list[str]:
    path = TEXT / f"{lang}.txt"
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def word_equivalents_per_char() -> dict[str, float]:
    """English words per character of each CHAR_LANGS language, from mean sentence lengths."""
    en = read_sentences("en")
    en_words = statistics.mean(len(s.split()) for s in en)
    return {
        lang: en_words / statistics.mean(len(s) for s in read_sentences(lang))
        for lang in CHAR_LANGS
    }


def build_passages(lang: str, words: int, per_char: dict[str, float]) -> list[str]:
    """Consecutive sentences joined until the passage is closest to `words` (word
    equivalents: characters x per_char for CHAR_LANGS); a short tail is dropped."""
    sentences = read_sentences(lang)
    joiner = "" if lang == "ja" else " "

    def size(s: str) -> float:
        return len(s) * per_char[lang] if lang in CHAR_LANGS else len(s.split())

    passages, current, n = [], [], 0.0
    for s in sentences:
        w = size(s)
        if current and abs(n + w - words) > abs(n - words):
            passages.append(joiner.join(current))
            current, n = [], 0.0
        current.append(s)
        n += w
    if n >= words / 2:
        passages.append(joiner.join(current))
    return passages


# --------------------------------------------------------------------------- worker


def worker(args) -> None:
    import numpy as np
    import pandas as pd
    import torch

    from contriever_repro.models.spec import ModelSpec, load_encoder
    from contriever_repro.retrieval.encode import encode_texts, passage_texts, tokenize

    torch.set_num_threads(args.threads)
    # The Mr. TyDi models' settings (config models.mcontriever): normaliser, no lower-casing.
    spec = ModelSpec(name="minilm", source=minilm_path(), normalize_text=True,
                     max_passage_length=MAX_LENGTH, batch_size=args.batch_size)  # fmt: skip
    tokenizer, model = load_encoder(spec)
    per_char = word_equivalents_per_char()
    texts = {}
    for lang in args.languages.split(","):
        raw = build_passages(lang, args.words, per_char)
        corpus = pd.DataFrame({"doc_id": range(len(raw)), "title": "", "text": raw})
        texts[lang] = passage_texts(corpus, spec)

    def encode(batch: list[str]) -> np.ndarray:
        return encode_texts(batch, tokenizer, model, max_length=MAX_LENGTH,
                            batch_size=spec.batch_size, pooling=spec.pooling,
                            l2_normalize=spec.l2_normalize, dtype="fp32")  # fmt: skip

    warm = [t for lang in texts for t in texts[lang][:2]][: spec.batch_size]
    encode(warm)
    results = {}
    for lang, passages in texts.items():
        unit = "characters" if lang in CHAR_LANGS else "words"
        sizes = [len(p) * per_char[lang] if lang in CHAR_LANGS else len(p.split())
                 for p in passages]  # fmt: skip
        full = tokenizer(passages, add_special_tokens=True)["input_ids"]
        kept = tokenize(tokenizer, passages, MAX_LENGTH)["attention_mask"].sum(dim=1)
        kept = kept.numpy().astype(np.float64)
        timed = passages[: args.passages]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            emb = encode(timed)
            times.append(time.perf_counter() - start)
        seconds = min(times)  # the least disturbed by other processes
        timed_tokens = float(kept[: len(timed)].sum())
        results[lang] = {
            "passages_built": len(passages),
            "length_unit": unit,
            "word_equivalents_per_passage": float(np.mean(sizes)),
            "chars_per_passage": float(np.mean([len(p) for p in passages])),
            "tokens_per_passage": float(kept.mean()),
            "tokens_sq_per_passage": float((kept**2).mean()),
            "untruncated_tokens_per_passage": float(np.mean([len(ids) for ids in full])),
            "truncated_share": float(np.mean([len(ids) > MAX_LENGTH for ids in full])),
            "unk_share": sum(ids.count(tokenizer.unk_token_id) for ids in full)
            / sum(len(ids) for ids in full),
            "timed_passages": len(timed),
            "timed_tokens_per_passage": timed_tokens / len(timed),
            "seconds": seconds,
            "seconds_each_repeat": times,
            "passages_per_s": len(timed) / seconds,
            "tokens_per_s": timed_tokens / seconds,
            "finite": bool(np.isfinite(emb).all()),
            "example": passages[0][:160],
        }
        print(f"{lang}: {results[lang]['passages_per_s']:.2f} passages/s", file=sys.stderr)
    emit_result(
        {
            "languages": results,
            "char_langs_word_equivalents_per_char": per_char,
            "peak_rss_mib": peak_rss_mib(),
        }
    )


# --------------------------------------------------------------------------- projection


def project(measured: dict, config: dict, models: dict, gpu_tflops: float) -> dict:
    """Per language: CPU hours (MiniLM measured rate; BERT-base at the same FLOP/s), GPU
    hours for BERT-base at the ASSUMED rate, and per encoding job."""
    minilm, base = models["minilm"], models["bert_base"]
    per = {}
    for lang, n in MRTYDI_PASSAGES.items():
        m = measured[lang]
        f_minilm = flops_per_pair(minilm, m["tokens_per_passage"], m["tokens_sq_per_passage"])
        f_base = flops_per_pair(base, m["tokens_per_passage"], m["tokens_sq_per_passage"])
        dense = 2 * base["n_params_nonembed"] * m["tokens_per_passage"]
        jobs = config["shards"][lang]
        gpu_h = n * f_base / (gpu_tflops * 1e12) / 3600
        per[lang] = {
            "passages": n,
            "minilm_cpu_hours": n / m["passages_per_s"] / 3600,
            "bert_base_cpu_hours": n / m["passages_per_s"] * f_base / f_minilm / 3600,
            "bert_base_gflops_per_passage": f_base / 1e9,
            "attention_share_of_flops": 1 - dense / f_base,
            "cpu_gflops_effective_minilm": f_minilm * m["passages_per_s"] / 1e9,
            "bert_base_gpu_hours_assumed": gpu_h,
            "jobs": jobs,
            "passages_per_job": -(-n // jobs),
            "gpu_minutes_per_job_assumed": 60 * gpu_h * (-(-n // jobs)) / n,
        }
    keys = ("passages", "minilm_cpu_hours", "bert_base_cpu_hours",
            "bert_base_gpu_hours_assumed", "jobs")  # fmt: skip
    one = {k: sum(v[k] for v in per.values()) for k in keys}
    k = len(config["dense_models"])
    return {
        "gpu_tflops_assumed": gpu_tflops,
        "languages": per,
        "total_one_model": one,
        "dense_models": config["dense_models"],
        # MiniLM is none of them: its hours are a measured reference, not one of their costs.
        "total_all_dense_models": {
            key: v * k for key, v in one.items() if key != "minilm_cpu_hours"
        },
    }


# --------------------------------------------------------------------------- report


def report(payload: dict) -> str:
    m, a, meas = payload["machine"], payload["args"], payload["measured"]
    p = payload["projection"]
    load = m["load_average_1min"]
    pc = meas["char_langs_word_equivalents_per_char"]
    per_char = ", ".join(f"{lang} {a['words'] / v:.0f} characters" for lang, v in pc.items())
    lines = [
        "# Mr. TyDi encoding cost per language",
        "",
        f"{payload['date']}; CPU: {m['cpu']}, {a['threads']} threads; torch {m['torch']}, "
        f"transformers {m['transformers']}. Load average (1 min) {load['start']:.1f} at the "
        f"start, {load['end']:.1f} at the end: above {a['threads']}, other processes shared "
        "the cores and the rates are lower bounds.",
        "",
        f"Passages: real sentences (Leipzig corpora, ../shared/data) joined into "
        f"~{a['words']}-word passages, the assumed size of Mr. TyDi's Wikipedia paragraphs; "
        f"Japanese and Thai by characters carrying ~{a['words']} English words ({per_char}; "
        "see the script's docstring).",
        "",
        "## Measured on this CPU",
        "",
        f"all-MiniLM-L6-v2 ({payload['models']['minilm']['layers']} layers, hidden "
        f"{payload['models']['minilm']['hidden']}, uncased English WordPiece), "
        f"retrieval.encode.encode_texts, fp32, max_length {MAX_LENGTH}, batch "
        f"{a['batch_size']}; each language timed on its own first {a['passages']} passages "
        f"after one warm-up batch (fastest of {a['repeats']}). Tokens include [CLS]/[SEP] "
        f"and are cut at {MAX_LENGTH}.",
        "",
        "| lang | passages built | words/passage | chars/passage | MiniLM tokens/passage | "
        "truncated at 512 | [UNK] share | passages/s | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lang, r in meas["languages"].items():
        words = f"{r['word_equivalents_per_passage']:.0f}" + (
            " (equiv.)" if r["length_unit"] == "characters" else ""
        )
        lines.append(
            f"| {lang} | {r['passages_built']} | {words} | {r['chars_per_passage']:.0f} | "
            f"{r['tokens_per_passage']:.0f} | {100 * r['truncated_share']:.0f}% | "
            f"{100 * r['unk_share']:.0f}% | **{r['passages_per_s']:.2f}** | "
            f"{r['tokens_per_s']:.0f} |"
        )
    lines += [
        "",
        "Tokenizer caveat: mBERT's multilingual vocabulary (mContriever's) gives fewer tokens "
        "than MiniLM's English one for non-Latin scripts that MiniLM cuts into single "
        "characters (ar, bn, ko, ru), so there the MiniLM counts, and the costs below, "
        "over-estimate. Where MiniLM lacks the characters it maps a whole word to one [UNK] "
        "(the [UNK] column: te, th, part of ja), so there they under-estimate.",
        "",
        "## Projected: the 11 Mr. TyDi v1.1 corpora (NOT measured)",
        "",
        f"Passages: {CITE}. CPU hours: this machine, MiniLM at the measured passages/s; "
        "BERT-base-sized (mContriever/mBERT: 12 layers, hidden 768, "
        f"{payload['models']['bert_base']['n_params_nonembed'] / 1e6:.0f}M non-embedding "
        f"parameters vs MiniLM's {payload['models']['minilm']['n_params_nonembed'] / 1e6:.0f}M)"
        " at the same FLOP/s. GPU: FLOPs per passage (2 x non-embedding parameters x tokens "
        "+ attention 4 x layers x length^2 x hidden) over an **ASSUMED** sustained "
        f"{p['gpu_tflops_assumed']:g} TFLOP/s (--gpu-tflops; fp16 on one A100/H100-class "
        "card), with the MiniLM token counts above; tokenisation and I/O not counted. "
        "Jobs: the config's `shards` per Mr. TyDi data set.",
        "",
        "| lang | passages | MiniLM CPU hours | BERT-base CPU hours | BERT-base GPU hours "
        "(ASSUMED) | jobs | passages in the largest job | GPU minutes per job (ASSUMED) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lang, r in p["languages"].items():
        lines.append(
            f"| {lang} | {r['passages']:,} | {r['minilm_cpu_hours']:,.0f} | "
            f"{r['bert_base_cpu_hours']:,.0f} | {r['bert_base_gpu_hours_assumed']:,.2f} | "
            f"{r['jobs']} | {r['passages_per_job']:,} | "
            f"{r['gpu_minutes_per_job_assumed']:,.1f} |"
        )
    one, all_ = p["total_one_model"], p["total_all_dense_models"]
    k = len(p["dense_models"])
    for label, t in (("**total, one model**", one), (f"**total, {k} dense models**", all_)):
        lines.append(
            f"| {label} | {t['passages']:,} | "
            + (f"{t['minilm_cpu_hours']:,.0f}" if "minilm_cpu_hours" in t else "-")
            + " | "
            f"{t['bert_base_cpu_hours']:,.0f} | {t['bert_base_gpu_hours_assumed']:,.1f} | "
            f"{t['jobs']:,} | - | - |"
        )
    att = [r["attention_share_of_flops"] for r in p["languages"].values()]
    lines += [
        "",
        f"- The {k} dense models of Tables 4 and 15 (config tables table4, table15): "
        + ", ".join(p["dense_models"])
        + ". All are BERT-base-sized (mBERT or mContriever), so each costs one model's total.",
        f"- Attention is {100 * min(att):.0f}-{100 * max(att):.0f}% of the BERT-base FLOPs "
        "per passage (the rest: 2 x parameters x tokens).",
        "- This CPU sustains "
        + ", ".join(
            f"{lang} {r['cpu_gflops_effective_minilm']:.0f}" for lang, r in p["languages"].items()
        )
        + " GFLOP/s with MiniLM (measured rates x the FLOP model).",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--passages", type=int, default=48, help="passages timed per language")
    ap.add_argument("--words", type=int, default=100, help="words per built passage")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes; the fastest counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--gpu-tflops",
        type=float,
        default=100.0,
        help="ASSUMED sustained TFLOP/s of one GPU (fp16, A100/H100 class) on BERT-base",
    )
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--languages", default=",".join(MRTYDI_PASSAGES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    missing = [lang for lang in (*MRTYDI_PASSAGES, "en") if not (TEXT / f"{lang}.txt").is_file()]
    if missing:
        sys.exit(f"sentences missing under {TEXT}: {sorted(set(missing))}")
    config = read_config(args.config)

    start = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--worker", "--passages", str(args.passages),
           "--words", str(args.words), "--batch-size", str(args.batch_size),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
    measured = run_variant("encode", cmd)
    import torch
    import transformers
    from transformers import AutoConfig

    minilm_cfg = AutoConfig.from_pretrained(minilm_path())
    models = {
        "minilm": {"layers": minilm_cfg.num_hidden_layers, **param_counts(minilm_cfg)},  # fmt: skip
        "bert_base": {"layers": 12, **bert_base_params()},
    }
    payload = {
        "date": utc_now(),
        "args": record_args(args, leave_out=("worker", "languages", "out")),
        "machine": {
            "cpu": _cpu_name(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            # Other processes on the machine slow the measurement down.
            "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
        },
        "source": {
            "passages": CITE,
            "text": str(TEXT.relative_to(ROOT.parent)),
            "shards": f"{args.config.name}: datasets with source: mrtydi",
        },
        "models": models,
        "config": config,
        "wall_s": time.perf_counter() - start,
        "measured": measured,
        "projection": project(measured["languages"], config, models, args.gpu_tflops),
    }
    md = report(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_mrtydi.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    (args.out / "bench_mrtydi.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
