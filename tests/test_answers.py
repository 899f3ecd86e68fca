"""DPR's has_answer and top-k accuracy on hand-made cases."""

from __future__ import annotations

import sys
import unicodedata

import pandas as pd
import pytest
import regex

from contriever_repro.data import text
from contriever_repro.errors import InputError
from contriever_repro.evaluation import answers as ans
from contriever_repro.evaluation.answers import (
    answer_tokens,
    checked_answer_tokens,
    dpr_tokens,
    has_answer,
    mark_hits,
    per_question_first_hit,
    top_k_accuracy,
)

PRECOMPOSED = "Beyonc\u00e9"
DECOMPOSED = "Beyonce\u0301"


def hit(answers: list[str], passage: str, normalize: bool = False) -> bool:
    return has_answer(answer_tokens(answers, normalize), passage, normalize)


def test_tokens_punctuation_case_and_marks():
    assert dpr_tokens("U.S. Army") == ["u", ".", "s", ".", "army"]
    assert dpr_tokens("May 18 , 2018") == ["may", "18", ",", "2018"]
    assert dpr_tokens("50%-off") == ["50", "%", "-", "off"]
    # NFD keeps the accent as a combining mark inside the token.
    assert dpr_tokens(PRECOMPOSED) == dpr_tokens(DECOMPOSED) == ["beyonce\u0301"]
    # Control and format characters are neither tokens nor part of one.
    assert dpr_tokens("a\u200bb\u0001c") == ["a", "b", "c"]


def test_tokeniser_equals_dprs_pattern_over_all_of_unicode():
    """DPR: ([\\p{L}\\p{N}\\p{M}]+)|([^\\p{Z}\\p{C}]) with IGNORECASE|UNICODE|MULTILINE."""
    dpr = regex.compile(
        r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
        flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE,
    )
    everything = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    ours = text._DPR_TOKEN.findall(everything)
    theirs = [m.group() for m in dpr.finditer(everything)]
    assert ours == theirs


def test_accents_match_only_the_same_letters():
    assert hit([PRECOMPOSED], f"the singer {DECOMPOSED} was born")
    assert hit([DECOMPOSED], f"the singer {PRECOMPOSED} was born")
    # Marks are kept: accented and plain spellings do not match, either way round.
    assert not hit(["Beyonce"], f"the singer {PRECOMPOSED} was born")
    assert not hit([PRECOMPOSED], "the singer Beyonce was born")
    assert not hit(["\u00e9"], "e")


def test_punctuation_multi_token_and_case():
    assert hit(["U.S."], "troops of the u.s. army")
    assert not hit(["U.S."], "troops of the US army")
    assert hit(["Wilhelm Conrad Röntgen"], "In 1901 WILHELM CONRAD RÖNTGEN, a German, won")
    assert not hit(["Wilhelm Conrad Röntgen"], "Conrad Wilhelm Röntgen won")
    assert not hit(["Wilhelm Conrad Röntgen"], "Wilhelm Conrad Röntgenium")
    # Token boundaries, not substrings.
    assert not hit(["art"], "a party")
    assert hit(["art"], "modern art.")
    # Any one answer is enough.
    assert hit(["nothing here", "May 18 , 2018"], "released on may 18, 2018 in")


def test_single_punctuation_answer():
    assert answer_tokens(["%"]) == [["%"]]
    assert hit(["%"], "rose by 5% in")
    assert not hit(["%"], "rose by five percent")


def test_answers_without_tokens_are_dropped():
    assert answer_tokens(["", "   ", "\u200b\u0001", "Paris"]) == [["paris"]]
    # A blank answer would match every passage in DPR; here it matches nothing.
    assert not hit([""], "any passage at all")
    with pytest.raises(InputError) as err:
        checked_answer_tokens("q7", ["", " \u00ad "], where="nq-test.qa.tsv")
    assert "q7" in str(err.value) and "nq-test.qa.tsv" in str(err.value)
    assert checked_answer_tokens("q8", ["", "Paris"]) == [["paris"]]


def test_normalize_applies_the_authors_normaliser_on_both_sides():
    answer = "\u201cMean Joe\u201d Greene"
    passage = 'nicknamed "Mean Joe" Greene'
    assert not hit([answer], passage)
    assert hit([answer], passage, normalize=True)
    assert hit(["5\u20132"], "won 5-2 at home", normalize=True)


def corpus_and_run():
    corpus = pd.DataFrame(
        {
            "doc_id": ["d1", "d2", "d3"],
            "title": ["Paris", "Berlin", "Rome"],
            "text": ["the city of light", "capital of germany is berlin", "capital city paris"],
        }
    )
    run = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q1", "q2", "q2"],
            "doc_id": ["d1", "d2", "d3", "d3", "d2"],
            "rank": [1, 2, 3, 1, 2],
            "score": [3.0, 2.0, 1.0, 5.0, 4.0],
        }
    )
    return corpus, run


def test_mark_hits_searches_text_not_title_and_tokenises_each_passage_once(monkeypatch):
    corpus, run = corpus_and_run()
    passages = corpus.set_index("doc_id")["text"]
    calls = []
    real = ans._prepare
    monkeypatch.setattr(ans, "_prepare", lambda t, n: calls.append(t) or real(t, n))
    marked = mark_hits(run, {"q1": ["Paris"], "q2": ["Berlin"]}, passages)
    # d1 has Paris only in its title, which is not searched; d3 has it in its text.
    assert marked["has_answer"].tolist() == [False, False, True, False, True]
    assert list(marked.columns) == ["query_id", "doc_id", "rank", "score", "has_answer"]
    assert "has_answer" not in run.columns
    passage_calls = [c for c in calls if c in set(corpus["text"])]
    assert sorted(passage_calls) == sorted(corpus["text"])


def test_mark_hits_errors():
    corpus, run = corpus_and_run()
    passages = dict(zip(corpus["doc_id"], corpus["text"], strict=True))
    del passages["d2"]
    with pytest.raises(InputError, match="'d2'"):
        mark_hits(run, {"q1": ["Paris"], "q2": ["Berlin"]}, passages, where="run.parquet")
    passages["d2"] = "x"
    with pytest.raises(InputError, match="'q2'"):
        mark_hits(run, {"q1": ["Paris"]}, passages)
    with pytest.raises(InputError, match=r"questions\.jsonl.*q2"):
        mark_hits(run, {"q1": ["Paris"], "q2": ["\u0001"]}, passages, where="questions.jsonl")


def test_top_k_accuracy_counts_questions_without_hits_as_misses():
    hits = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q1", "q2", "q2"],
            "doc_id": ["a", "b", "c", "a", "b"],
            "rank": [1, 2, 3, 1, 2],
            "score": [3.0, 2.0, 1.0, 2.0, 1.0],
            "has_answer": [False, True, True, False, False],
        }
    )
    questions = ["q1", "q2", "q3"]  # q3 retrieved nothing
    first = per_question_first_hit(hits, questions)
    assert first.to_dict() == {"q1": 2, "q2": 0, "q3": 0}
    acc = top_k_accuracy(hits, questions, [1, 2, 20])
    assert acc == {"accuracy@1": 0.0, "accuracy@2": 1 / 3, "accuracy@20": 1 / 3}


def test_top_k_accuracy_errors():
    hits = pd.DataFrame({"query_id": ["q9"], "rank": [1], "has_answer": [True]})
    with pytest.raises(InputError, match="q9"):
        top_k_accuracy(hits, ["q1"], [1])
    with pytest.raises(InputError, match="more than once"):
        top_k_accuracy(hits, ["q9", "q9"], [1])
    with pytest.raises(InputError, match="k_values"):
        top_k_accuracy(hits, ["q9"], [0])


def test_nfd_is_what_unicodedata_gives():
    # The precomposed letter really is decomposed before tokenising.
    assert unicodedata.normalize("NFD", PRECOMPOSED) == DECOMPOSED
