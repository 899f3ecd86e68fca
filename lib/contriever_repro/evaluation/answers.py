"""Answer matching for open-domain QA retrieval: DPR's `has_answer` and top-k accuracy.

The NQ, TriviaQA and MKQA numbers of the paper count a question as answered at k when
one of its top-k passages contains an answer string, tested the way DPR's evaluation
tests it (the authors' `src/evaluation.py`, spec §14.4):

* the passage *text* (never its title) and each answer are put in Unicode NFD;
* both are cut by DPR's SimpleTokenizer, runs of letters/numbers/marks or any single
  character that is neither whitespace nor a control character, and lower-cased;
* a passage contains an answer when the answer's tokens occur in it as a contiguous
  run.

NFD keeps accents as combining marks inside the token ("Beyoncé" -> "beyonce\u0301"),
so an accented answer does not match an unaccented passage, nor the reverse; only the
precomposed and decomposed spellings of the same letters become equal.

`normalize=True` applies the Contriever character normaliser (`data.text.normalize_text`)
to passage and answers before NFD, for settings that evaluate with it on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.text import dpr_tokens, normalize_text
from ..errors import InputError

# Tokens never contain a control character, so joining them with one gives a string in
# which "answer occurs as a contiguous token run" is plain substring search.
_SEP = "\x00"


def _prepare(text: str, normalize: bool) -> list[str]:
    return dpr_tokens(normalize_text(text) if normalize else text)


def _joined(tokens: Sequence[str]) -> str:
    return _SEP + _SEP.join(tokens) + _SEP


def answer_tokens(answers: Sequence[str], normalize: bool = False) -> list[list[str]]:
    """Token lists of `answers`, leaving out answers with no token at all.

    DPR would keep such an answer (an empty string, spaces, control characters) and its
    empty token list matches every passage, so one blank alias would make every
    retrieval a success; it is dropped instead.
    """
    out = []
    for answer in answers:
        tokens = _prepare(answer, normalize)
        if tokens:
            out.append(tokens)
    return out


def checked_answer_tokens(
    question_id: str, answers: Sequence[str], where: str = "", normalize: bool = False
) -> list[list[str]]:
    """`answer_tokens`, but a question left with no usable answer is an InputError."""
    tokens = answer_tokens(answers, normalize)
    if not tokens:
        raise InputError(
            f"question {question_id!r}: none of its {len(answers)} answer(s) "
            f"{list(answers)[:5]!r} has a token to match, so it could never be answered",
            where or None,
        )
    return tokens


def has_answer(
    answer_tokens: Sequence[Sequence[str]], passage_text: str, normalize: bool = False
) -> bool:
    """Whether any answer's tokens occur contiguously in the passage text's tokens."""
    passage = _joined(_prepare(passage_text, normalize))
    return any(_joined(tokens) in passage for tokens in answer_tokens if tokens)


def mark_hits(
    run: pd.DataFrame,
    answers: Mapping[str, Sequence[str]],
    passages: Mapping[str, str],
    normalize: bool = False,
    where: str = "",
) -> pd.DataFrame:
    """A copy of `run` (query_id, doc_id, rank, score) with a bool column `has_answer`.

    `answers` maps each query id to its answer strings; `passages` maps doc ids to the
    passage *text* (no title), e.g. a dict or a pandas Series indexed by doc id. Each
    distinct passage is tokenised once and dropped when its hits are marked, so memory
    does not grow with the run.
    """
    missing_cols = [c for c in ("query_id", "doc_id", "rank") if c not in run.columns]
    if missing_cols:
        raise InputError(f"run is missing columns {missing_cols}", where or None)
    out = run.copy()
    qids = out["query_id"].astype(str).to_numpy()
    dids = out["doc_id"].astype(str).to_numpy()

    wanted: dict[str, list[str]] = {}
    for qid in pd.unique(qids):
        if qid not in answers:
            raise InputError(f"run has query {qid!r}, which has no answers", where or None)
        tokens = checked_answer_tokens(qid, answers[qid], where, normalize)
        wanted[qid] = [_joined(t) for t in tokens]

    flags = np.zeros(len(out), dtype=bool)
    codes, uniques = pd.factorize(dids)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for group in np.split(order, bounds) if len(order) else []:
        doc_id = uniques[codes[group[0]]]
        if doc_id not in passages:
            raise InputError(
                f"run retrieved passage {doc_id!r}, which is not in the passage collection",
                where or None,
            )
        passage = _joined(_prepare(passages[doc_id], normalize))
        for i in group:
            flags[i] = any(a in passage for a in wanted[qids[i]])
    out["has_answer"] = flags
    return out


def _check_questions(question_ids: Sequence[str]) -> pd.Index:
    index = pd.Index([str(q) for q in question_ids], dtype=object)
    if index.has_duplicates:
        dup = index[index.duplicated()][0]
        raise InputError(f"question id {dup!r} is listed more than once")
    return index


def per_question_first_hit(hits: pd.DataFrame, question_ids: Sequence[str]) -> pd.Series:
    """Rank of each question's first passage with an answer; 0 when none has one.

    Indexed by `question_ids` in their order; a question without hits gets 0.
    """
    index = _check_questions(question_ids)
    qids = hits["query_id"].astype(str)
    unknown = pd.Index(pd.unique(qids)).difference(index)
    if len(unknown):
        raise InputError(
            f"hits for {len(unknown)} query id(s) that are not among the "
            f"{len(index)} questions, e.g. {list(unknown[:3])}"
        )
    answered = hits["has_answer"].to_numpy(dtype=bool)
    first = hits["rank"][answered].groupby(qids[answered]).min()
    return first.reindex(index, fill_value=0).astype(int)


def top_k_accuracy(
    hits: pd.DataFrame, question_ids: Sequence[str], k_values: Iterable[int]
) -> dict[str, float]:
    """`accuracy@k`: share of all questions with an answer in their top k passages.

    The denominator is every question in `question_ids`, as in the authors' script
    (`len(data)`), so a question with no hits counts as a miss.
    """
    ks = list(k_values)
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise InputError(f"k_values must be positive integers, got {ks}")
    first = per_question_first_hit(hits, question_ids).to_numpy()
    if len(first) == 0:
        raise InputError("no questions to evaluate")
    found = first > 0
    return {f"accuracy@{int(k)}": float(np.mean(found & (first <= k))) for k in ks}
