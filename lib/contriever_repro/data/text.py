"""Text preparation shared by encoding and pre-training.

`normalize_text` follows the character normaliser the Contriever authors adapted from
ChemDataExtractor (used for mContriever data, Mr. TyDi and MKQA evaluation): it unifies
dashes, quotes, primes, ellipses and slashes and drops control characters, so that
the same word is tokenised the same way whatever typography the source used.
"""

from __future__ import annotations

import re
import unicodedata

import regex

_DELETE = {chr(c) for c in (*range(0x01, 0x09), 0x0E, 0x0F, *range(0x11, 0x1C))} | {"\u00ad"}
_TO_SPACE = {"\u000b", "\u000c", "\u0085"}
_HYPHENS = "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\uff0d\u207b"
_DOUBLE_QUOTES = "\u201c\u201d\u201e\u201f"
_SINGLE_QUOTES = "\u2018\u2019\u201a\u201b\u055a\ua78b\ua78c\uff07`\u00b4"

_TABLE: dict[int, str] = {}
_TABLE.update({ord(c): "" for c in _DELETE})
_TABLE.update({ord(c): " " for c in _TO_SPACE})
_TABLE.update({ord(c): "-" for c in _HYPHENS})
_TABLE.update({ord(c): '"' for c in _DOUBLE_QUOTES})
_TABLE.update({ord(c): "'" for c in _SINGLE_QUOTES})
_TABLE.update(
    {
        ord("\u2032"): "'",  # prime
        ord("\u2035"): "'",  # reversed prime
        ord("\u2033"): "''",  # double prime
        ord("\u2036"): "''",
        ord("\u2034"): "'''",  # triple prime
        ord("\u2037"): "'''",
        ord("\u2057"): "''''",  # quadruple prime
        ord("\u2026"): "...",  # ellipsis
        ord("\u2044"): "/",  # fraction slash
        ord("\u2215"): "/",  # division slash
    }
)


def normalize_text(text: str) -> str:
    """Apply the Contriever character normaliser (tildes are deliberately left alone).

    The authors' `normalize` replaces characters one class at a time (controls,
    hyphens, quotes, primes, the ellipsis), then rewrites " . . . " to " ... ", then maps
    slashes. Every character step before that rewrite is folded into one table here and
    the rewrite follows it, so a " . . . " that only appears after a control character,
    VT/FF/NEL or a soft hyphen was replaced is rewritten too, as in theirs; the slash
    mapping, the one step they run after it, can neither make nor break " . . . ".
    `str.replace` scans left to right without overlaps, like theirs.
    """
    return text.translate(_TABLE).replace(" . . . ", " ... ")


def passage_text(title: str | None, text: str, use_title: bool = True, sep: str = " ") -> str:
    """Join title and body as Contriever and BEIR do: "title text", or text alone."""
    if use_title and title:
        return f"{title}{sep}{text}"
    return text


def prepare(text: str, lowercase: bool = False, normalize: bool = False) -> str:
    """Normalise first, then lower-case: the order of the authors' BEIR evaluation."""
    if normalize:
        text = normalize_text(text)
    if lowercase:
        text = text.lower()
    return text


_WS = re.compile(r"\s+")


def collapse_whitespace(text: str) -> str:
    return _WS.sub(" ", text).strip()


# DPR's SimpleTokenizer (its has_answer): runs of letters, numbers and marks, or any
# single character that is neither whitespace nor a control character. DPR writes the
# second alternative as [^\p{Z}\p{C}]; with \p{C} excluded, \s and \p{Z} leave out the
# same characters (tests/test_answers.py checks this over all of Unicode).
_DPR_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\s\p{C}]")


def dpr_tokens(text: str) -> list[str]:
    """DPR's SimpleTokenizer on the NFD form of `text`, tokens lower-cased: what answer
    matching (evaluation/answers.py) and the demo world's answerable questions use."""
    return [t.lower() for t in _DPR_TOKEN.findall(unicodedata.normalize("NFD", text))]
