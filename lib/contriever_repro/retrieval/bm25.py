"""A computed BM25 baseline with the maintained `bm25s` library.

BEIR's BM25 numbers (the baseline in the Contriever paper) come from Elasticsearch
with its defaults: Lucene BM25 with k1 = 1.2, b = 0.75 and the `english` analyzer
(lower-casing, Lucene's 33 English stop words, the original Porter stemmer). The
defaults here follow that as closely as bm25s allows: method "lucene" (Lucene's idf
and term-frequency saturation), k1 = 1.2, b = 0.75, stop words "en" (the same 33 words)
and PyStemmer's "porter" algorithm. Known differences from BEIR's setup: BEIR scores the
title and body as two fields (multi_match best_fields, tie_breaker 0.5) while we index
"title text" as one field, as the dense models see it; and bm25s's tokenizer keeps only
word tokens of two or more characters. On SciFact this lands near BEIR's 0.665 nDCG@10.

Only documents that share at least one term with the query are candidates, so a query
can get fewer than top_k hits. Ties are broken by doc id (ascending), as the dense
search does, so runs are reproducible.
"""

from __future__ import annotations

import logging

import bm25s
import numpy as np
import pandas as pd

from ..data.text import passage_text
from ..errors import InputError
from ..io import RUN_SCHEMA

log = logging.getLogger(__name__)

DEFAULT_K1 = 1.2
DEFAULT_B = 0.75
DEFAULT_METHOD = "lucene"
DEFAULT_STEMMER = "porter"
DEFAULT_STOPWORDS = "en"


def _require(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} table is missing columns {missing} (has {list(df.columns)})")


def _stemmer(language: str | None):
    if language is None:
        return None
    try:
        import Stemmer
    except ImportError as exc:  # pragma: no cover - PyStemmer is a declared dependency
        raise InputError("stemming needs the PyStemmer package (pip install PyStemmer)") from exc
    if language not in Stemmer.algorithms():
        raise InputError(
            f"unknown stemmer language {language!r}; PyStemmer knows {Stemmer.algorithms()}"
        )
    return Stemmer.Stemmer(language)


def _text_or_empty(values: pd.Series) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]


class BM25Index:
    """A bm25s index over a corpus table (doc_id, title, text), searchable many times.

    Building the index is the costly part, so one index serves several query sets
    (e.g. the dev and test queries of a dataset).
    """

    def __init__(
        self,
        corpus: pd.DataFrame,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        method: str = DEFAULT_METHOD,
        stemmer_language: str | None = DEFAULT_STEMMER,
        stopwords: str | list[str] | None = DEFAULT_STOPWORDS,
        show_progress: bool = False,
    ):
        _require(corpus, ("doc_id", "title", "text"), "corpus")
        if len(corpus) == 0:
            raise InputError("corpus table is empty")
        doc_ids = corpus["doc_id"].astype(str)
        if doc_ids.duplicated().any():
            dup = doc_ids[doc_ids.duplicated()].iloc[0]
            raise InputError(f"corpus lists doc id {dup!r} more than once")
        self.doc_ids = np.asarray(doc_ids.tolist(), dtype=object)
        # Position of each doc in ascending doc-id order: the tie-breaker. An object array
        # sorts without the fixed-width copy a str array would make of long ids.
        order = np.argsort(self.doc_ids, kind="stable")
        self._id_rank = np.empty(len(order), dtype=np.int64)
        self._id_rank[order] = np.arange(len(order))

        texts = [
            passage_text(t, x)
            for t, x in zip(
                _text_or_empty(corpus["title"]), _text_or_empty(corpus["text"]), strict=True
            )
        ]
        self.tokenizer = bm25s.tokenization.Tokenizer(
            lower=True, stopwords=stopwords, stemmer=_stemmer(stemmer_language)
        )
        tokens = self.tokenizer.tokenize(
            texts, update_vocab=True, return_as="tuple", show_progress=show_progress
        )
        self.retriever = bm25s.BM25(k1=k1, b=b, method=method)
        self.retriever.index(tokens, show_progress=show_progress)
        self._indptr = self.retriever.scores["indptr"]
        self._indices = self.retriever.scores["indices"]
        self.show_progress = show_progress

    def _query_token_ids(self, texts: list[str]) -> list[list[int]]:
        # update_vocab=False: words the corpus never had are dropped, not added.
        return self.tokenizer.tokenize(
            texts,
            update_vocab=False,
            return_as="ids",
            allow_empty=False,
            show_progress=self.show_progress,
        )

    def _top(self, token_ids: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Doc positions and scores of the best n candidates, by score then doc id."""
        if not token_ids:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        scores = self.retriever.get_scores_from_ids(token_ids)
        ids = np.unique(np.asarray(token_ids, dtype=np.int64))
        cand = np.unique(
            np.concatenate([self._indices[self._indptr[t] : self._indptr[t + 1]] for t in ids])
        )
        cand_scores = scores[cand]
        if len(cand) > n:
            kth = np.partition(cand_scores, len(cand) - n)[len(cand) - n]
            keep = cand_scores >= kth
            cand, cand_scores = cand[keep], cand_scores[keep]
        order = np.lexsort((self._id_rank[cand], -cand_scores))[:n]
        return cand[order], cand_scores[order]

    def search(
        self, queries: pd.DataFrame, top_k: int = 1000, drop_identical_ids: bool = True
    ) -> pd.DataFrame:
        """Run table (query_id, doc_id, rank, score): top_k per query, rank from 1.

        With `drop_identical_ids`, a hit whose doc id equals the query id is removed (the
        ArguAna / Quora / CQADupStack convention beir applies) and top_k still remain.
        """
        _require(queries, ("query_id", "text"), "queries")
        if int(top_k) != top_k or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        qids = queries["query_id"].astype(str).tolist()
        if len(set(qids)) != len(qids):
            raise InputError("queries table lists a query id more than once")
        token_lists = self._query_token_ids(_text_or_empty(queries["text"]))
        out_q, out_d, out_r, out_s = [], [], [], []
        for qid, token_ids in zip(qids, token_lists, strict=True):
            pos, scores = self._top(token_ids, top_k + 1 if drop_identical_ids else top_k)
            if drop_identical_ids:
                keep = self.doc_ids[pos] != qid
                pos, scores = pos[keep][:top_k], scores[keep][:top_k]
            out_q.append(np.full(len(pos), qid, dtype=object))
            out_d.append(self.doc_ids[pos])
            out_r.append(np.arange(1, len(pos) + 1, dtype=np.int32))
            out_s.append(scores.astype(np.float32))
        if not out_q:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _RUN_DTYPES.items()})
        run = pd.DataFrame(
            {
                "query_id": np.concatenate(out_q),
                "doc_id": np.concatenate(out_d),
                "rank": np.concatenate(out_r),
                "score": np.concatenate(out_s),
            }
        )
        return run.astype(_RUN_DTYPES)[RUN_SCHEMA.names]


_RUN_DTYPES = {"query_id": str, "doc_id": str, "rank": "int32", "score": "float32"}


def bm25_search(
    corpus: pd.DataFrame,
    queries: pd.DataFrame,
    top_k: int = 1000,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
    method: str = DEFAULT_METHOD,
    stemmer_language: str | None = DEFAULT_STEMMER,
    stopwords: str | list[str] | None = DEFAULT_STOPWORDS,
    drop_identical_ids: bool = True,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Index `corpus` and return the BM25 run for `queries`; see the module docstring."""
    index = BM25Index(
        corpus,
        k1=k1,
        b=b,
        method=method,
        stemmer_language=stemmer_language,
        stopwords=stopwords,
        show_progress=show_progress,
    )
    return index.search(queries, top_k=top_k, drop_identical_ids=drop_identical_ids)
