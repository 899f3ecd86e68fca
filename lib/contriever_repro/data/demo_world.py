"""A seeded synthetic world that stands in for BEIR, MS MARCO and pre-training text.

The demo must run the whole workflow offline on a laptop CPU in minutes, yet still
exercise what the real data exercise: BM25 that works but is imperfect, a dense model
that can beat it by learning synonymy from unlabelled text, graded relevance, data
sets whose queries are corpus documents (Quora, ArguAna), grouped data sets
(CQADupStack) and a dev split (MS MARCO).

The world is language independent: topics, entities and facts are plain integers.
A `Language` renders concepts as made-up words; every concept has "document" forms
and "query-only" forms, so a query written with synonyms shares few words with the
passage it asks about. Pre-training text uses every form, so the synonymy can be
learnt from it. Each random stream is seeded from (seed, purpose) strings, so adding a
data set, a language or pre-training text never changes what was generated before.

Dataset spec (one dict per data set; every key is optional):
  kind             "standard" (default), "self_query" (queries are corpus documents,
                   query id == doc id, the relevant docs are its paraphrases) or "group"
                   (a parent folder of sub-data sets, like CQADupStack)
  subsets          group only: {subset name: spec}; other keys of the group are defaults
                   for its subsets, and subsets get disjoint topics
  n_docs           corpus size (default 500)
  splits           {split: number of queries} (default {"test": 100}); one qrels file each
  n_topics         topics the data set covers, drawn from the world (default 6)
  topics           explicit list of world topic indices (overrides n_topics)
  language         index of the rendering language (default 0)
  graded           relevance 2 for passages stating the whole fact, 1 for partial ones;
                   otherwise every relevant passage is 1 (default False)
  max_relevant     most relevant documents per query, 1-3 (default 3)
  doc_words        [min, max] words of passage text (default [40, 150])
  docs_per_entity  standard only: [min, max] passages written per entity (default [1, 4])
  doc_style        "passage" (default) or "question" (short query-like documents, Quora)
  titles           whether documents have titles (default True)
  synonym_rate     probability that a query word uses a query-only synonym (default 0.6)
  alias_rate       probability that a query names the entity by its alias (default 0.15)
  query_id_prefix  standard only: prefix of query ids, never clashing with the numeric
                   doc ids (default "q")
  doc_id_prefix    prefix of doc ids (default "")

Languages (`languages` of config.demo_world, read by `make_world`): a list of MKQA
codes or {"code": ..., "script": "latin" | "cyrillic" | "arabic"}; the position is the
language index, and the first, which must be "en", is language 0 and plays English.
Each language has its own made-up words and word order; a language in another script
maps its words and the entity names through a fixed letter table (names are
transliterated, as real names are across scripts), so lexical matching across scripts
finds nothing, as in the paper's MKQA results. Latin-script languages keep the names.

Open-domain QA (`generate_openqa`, spec `openqa`, every key optional):
  n_articles       entities with an English "Wikipedia article" (default 600); each
                   article states all the entity's facts, padded with topical clauses
  article_words    [min, max] words of an article (default [150, 300])
  passage_words    words per passage: articles are cut into disjoint blocks of this
                   many words, as DPR cut Wikipedia into psgs_w100 (default 100)
  question_sets    {name: {n_questions, entity_share, style, synonym_rate, alias_rate}}
                   FiD-style question files; entity_share of the questions ask "who"
                   (answer: the entity's name and alias, often two words), the others
                   ask for a fact's value (answer: "<quality> <object>" phrases);
                   style "nq" (lower case, no "?") or "trivia" (default
                   {"demo-nq": {}}, 200 questions, entity_share 0.6, style "nq")
  mkqa             {n_questions, n_dropped, entity_share, synonym_rate, alias_rate}:
                   the same kind of questions written in every language, English
                   answers, plus n_dropped unanswerable / binary / long_answer examples
                   (default 150 and 30)
Every question's answer appears (DPR's has_answer token match) in the text of a
passage that states the fact it asks about.

Mr. TyDi (`generate_mrtydi`, spec `mrtydi`, every key optional): per language a
release archive `mrtydi-v1.1-<name>.tar.gz` in the real layout (collection/docs.jsonl.gz
with ids `<article>#<passage>`, topic.tsv and topic.<split>.tsv, qrels.<split>.txt and
qrels.txt), monolingual as the real one: passages and questions in the same language,
written as a standard data set (questions paraphrase one fact, query-only synonyms).
  languages        Mr. TyDi codes among `languages` (default: every one of them)
  n_docs           passages per language (default 250)
  splits           {train, dev, test: number of questions}, test required
                   (default {train: 120, dev: 30, test: 60})
  n_topics, max_relevant, doc_words, synonym_rate, alias_rate: as for data sets
                   (defaults 6, 2, [40, 120], 0.6, 0.15)

Multilingual pre-training text (`generate_multilingual_pretraining`, spec
`multilingual_pretraining`: lines per language, doc_words, code_switch): one document
stream per language, in which each sentence is written in English with probability
`code_switch` (code-switching). The English sentences say what the rest of the document
says about the same entity, and restated facts ("that is, ...") are then often a
sentence and its translation side by side, so a contrastive model that takes two crops
of one document as a positive pair is pushed to map both languages to the same place;
nothing else ties the languages together (no dictionary, no parallel corpus).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_path
from .mkqa import MKQA_LANGUAGES
from .mrtydi import MRTYDI_LANGUAGES, archive_root, write_archive
from .mrtydi import SPLITS as MRTYDI_SPLITS
from .text import dpr_tokens

# ----------------------------------------------------------------------------- words


def _parts(spec: str) -> tuple[str, ...]:
    return tuple(spec.split())


_ONSETS = _parts("b c d f g h j k l m n p r s t v w z bl br ch dr fl gr kl kr pl pr sh st tr th")
_VOWELS = _parts("a e i o u ai au ea ei ia io oo ou")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "m", "k", "t", "nd", "rk")
_NAME_ONSETS = _parts("b d g k l m n r s t v z dr gr kr tr st")
_NAME_VOWELS = _parts("a e i o u y")
_NAME_CODAS = ("", "", "n", "r", "l", "x", "th", "sk")

_ROLES = {  # function-word roles and how many words each has in every language
    "det": 3,  # articles: "the", "a"
    "prep": 3,  # "in", "of"
    "pron": 2,  # "it", "they": later mentions of the entity
    "equiv": 2,  # "that is": joins a synonym pair in pre-training text
    "q": 5,  # question words: used only in queries
    "ask": 3,  # "tell me", "which": query-only fillers
}
_BACKGROUND_MAX_WORDS = 8

# Letter tables for languages in another script: one letter per Latin letter and no
# letter that decomposes under NFD (BERT's accent stripping would merge it with another).
_LATIN = "abcdefghijklmnopqrstuvwxyz"
_SCRIPTS: dict[str, dict[int, str] | None] = {
    "latin": None,
    "cyrillic": str.maketrans(_LATIN, "абцдефгхижклмнопщрстувшчыз"),
    "arabic": str.maketrans(
        _LATIN,
        "\u0627\u0628\u062b\u062f\u0647\u0641\u063a\u062d\u064a\u062c\u0643\u0644\u0645"
        "\u0646\u0648\u0637\u0642\u0631\u0633\u062a\u0639\u0630\u0636\u062e\u0638\u0632",
    ),
}
_MKQA_DROPPED = ("unanswerable", "binary", "long_answer")  # answer types the authors drop
_WIKIDATA_BASE = 100_000  # entity answers carry a made-up Wikidata id, Q<base + entity>


def has_answer(tokens: Sequence[str], answers: Iterable[str]) -> bool:
    """Whether an answer's tokens occur contiguously in `tokens` (DPR's rule)."""
    for answer in answers:
        a = dpr_tokens(answer)
        if a and any(list(tokens[i : i + len(a)]) == a for i in range(len(tokens) - len(a) + 1)):
            return True
    return False


class _WordMaker:
    """Pronounceable made-up words from one syllable inventory, never repeating a word."""

    def __init__(
        self,
        rng: random.Random,
        onsets: Sequence[str],
        vowels: Sequence[str],
        codas: Sequence[str],
        taken: set[str],
    ):
        self.rng = rng
        self.onsets, self.vowels, self.codas = list(onsets), list(vowels), list(codas)
        self.taken = taken

    def word(self, min_syllables: int, max_syllables: int) -> str:
        for attempt in range(10_000):
            n = self.rng.randint(min_syllables, max_syllables + attempt // 500)
            parts = [self.rng.choice(self.onsets) + self.rng.choice(self.vowels) for _ in range(n)]
            w = "".join(parts) + self.rng.choice(self.codas)
            if w not in self.taken:
                self.taken.add(w)
                return w
        raise RuntimeError("word inventory exhausted")  # unreachable for sane sizes


# ----------------------------------------------------------------------------- world


@dataclass(frozen=True)
class Concept:
    """Something words can name: a topic, a topic's attribute, a relation or a quality."""

    id: int
    kind: str  # "topic" | "attribute" | "relation" | "quality"
    topic: int | None = None


@dataclass(frozen=True)
class Entity:
    """A named thing with facts; the subject of passages (names are the same in every
    language, like proper nouns)."""

    id: int
    topic: int
    other_topic: int | None
    name: str
    alias: str


@dataclass(frozen=True)
class Fact:
    """`entity` `relation` a `quality` `obj`: what passages state and queries ask."""

    id: int
    entity: int
    relation: int
    obj: int
    quality: int


@dataclass(frozen=True)
class Language:
    """Surface forms of every concept, plus function words and a word order."""

    index: int
    doc_forms: tuple[tuple[str, ...], ...]  # by concept id; documents and queries
    query_forms: tuple[tuple[str, ...], ...]  # by concept id; never in evaluation corpora
    function_words: dict[str, tuple[str, ...]]
    order: str  # "SVO", "SOV" or "VSO"
    script: str = "latin"  # a key of _SCRIPTS; names are transliterated into it

    def forms(self, concept: int) -> tuple[str, ...]:
        return self.doc_forms[concept] + self.query_forms[concept]


@dataclass
class Document:
    """A generated passage, with the facts it states: fact id -> 2 (whole) or 1 (partial)."""

    doc_id: str
    title: str
    text: str
    entity: int | None
    topics: tuple[int, ...]
    facts: dict[int, int] = field(default_factory=dict)


@dataclass
class Query:
    query_id: str
    text: str
    split: str
    fact: int | None  # the fact asked about (standard data sets)


@dataclass(frozen=True)
class Clause:
    """One sentence's content before any word is chosen, so that every language
    renders the same documents: subject is ("name"|"alias", entity), ("pron", -1) or
    ("np", attribute concept); `lead` is a function-word role opening the sentence."""

    subject: tuple[str, int]
    relation: int
    obj: int
    quality: int | None
    topic: int | None
    lead: str | None = None


@dataclass(frozen=True)
class QuestionPlan:
    """A question's content: the fact, whether the entity goes by its alias, the word
    order (q = question word, e = entity, r = relation, x = quality + object) and
    whether a filler word opens it."""

    fact: int
    alias: bool
    order: str
    ask: bool


@dataclass(frozen=True)
class QAPlan:
    """An open-domain question's content: the fact, what the answer is ("entity": the
    entity's name, so the question omits it; "value": the fact's "<quality> <object>",
    so the question omits those), and the same choices as a QuestionPlan."""

    fact: int
    answer: str
    alias: bool
    order: str
    ask: bool


@dataclass
class QAPassage:
    """A DPR-style passage: a block of `passage_words` words cut from an article, with
    the facts whose whole clause lies inside it (fact id -> 2 whole, 1 partial)."""

    pid: int
    title: str
    text: str
    entity: int
    facts: dict[int, int]


@dataclass
class BeirDataset:
    """One BEIR-format collection held in memory, with the world links kept for later
    derivations (training pairs, QA answers)."""

    name: str
    corpus: list[Document]
    queries: list[Query]
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> query id -> doc id -> relevance
    language: int = 0


_DEFAULT_SPEC: dict[str, Any] = {
    "kind": "standard",
    "n_docs": 500,
    "splits": {"test": 100},
    "n_topics": 6,
    "topics": None,
    "language": 0,
    "graded": False,
    "max_relevant": 3,
    "doc_words": [40, 150],
    "docs_per_entity": [1, 4],
    "doc_style": "passage",
    "titles": True,
    "synonym_rate": 0.6,
    "alias_rate": 0.15,
    "query_id_prefix": "q",
    "doc_id_prefix": "",
}
_KINDS = ("standard", "self_query", "group")

# Example data sets, one per property the workflow must handle (config/demo.yaml may
# define its own with the same keys).
DEFAULT_DEMO_SPECS: dict[str, dict[str, Any]] = {
    "demo-scifact": {"n_docs": 600, "splits": {"test": 100, "train": 150}, "graded": True},
    "demo-quora": {
        "kind": "self_query",
        "n_docs": 800,
        "splits": {"test": 100, "dev": 50},
        "doc_style": "question",
        "titles": False,
    },
    "demo-arguana": {"kind": "self_query", "n_docs": 400, "splits": {"test": 80}},
    "demo-cqadupstack": {
        "kind": "group",
        "n_docs": 300,
        "splits": {"test": 50},
        "n_topics": 3,
        "doc_words": [40, 100],
        "subsets": {"android": {}, "gaming": {}, "unix": {"graded": True}},
    },
    "demo-msmarco": {
        "n_docs": 1500,
        "splits": {"train": 300, "dev": 100},
        "n_topics": 10,
        "max_relevant": 1,
        "doc_words": [30, 70],
        "docs_per_entity": [1, 3],
    },
}


class DemoWorld:
    """Topics, entities and facts, rendered into data sets and pre-training text."""

    def __init__(
        self,
        seed: int = 0,
        n_topics: int = 24,
        attributes_per_topic: int = 24,
        entities_per_topic: int = 40,
        facts_per_entity: int = 8,
        n_relations: int = 32,
        n_qualities: int = 40,
        n_languages: int = 1,
        scripts: Sequence[str] | None = None,
    ):
        sizes = {
            "n_topics": (n_topics, 2),
            "attributes_per_topic": (attributes_per_topic, 4),
            "entities_per_topic": (entities_per_topic, 1),
            "facts_per_entity": (facts_per_entity, 2),
            "n_relations": (n_relations, 2),
            "n_qualities": (n_qualities, 2),
            "n_languages": (n_languages, 1),
        }
        for key, (value, least) in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise InputError(f"demo world: {key} must be an integer >= {least}, got {value!r}")
        if facts_per_entity > n_relations * attributes_per_topic:
            raise InputError("demo world: facts_per_entity exceeds distinct (relation, attribute)")
        scripts = ["latin"] * n_languages if scripts is None else list(scripts)
        if len(scripts) != n_languages or any(x not in _SCRIPTS for x in scripts):
            raise InputError(
                f"demo world: scripts must name one of {sorted(_SCRIPTS)} for each of the "
                f"{n_languages} languages, got {scripts!r}"
            )
        self.seed = seed
        self.n_topics = n_topics
        self.n_languages = n_languages
        rng = self._rng("world")

        concepts: list[Concept] = [Concept(t, "topic", t) for t in range(n_topics)]
        self.topic_attributes: list[list[int]] = []
        for t in range(n_topics):
            ids = list(range(len(concepts), len(concepts) + attributes_per_topic))
            concepts.extend(Concept(i, "attribute", t) for i in ids)
            self.topic_attributes.append(ids)
        self.relations = list(range(len(concepts), len(concepts) + n_relations))
        concepts.extend(Concept(i, "relation") for i in self.relations)
        self.qualities = list(range(len(concepts), len(concepts) + n_qualities))
        concepts.extend(Concept(i, "quality") for i in self.qualities)
        self.concepts = concepts

        self._names_taken: set[str] = set()
        names = _WordMaker(
            self._rng("names"), _NAME_ONSETS, _NAME_VOWELS, _NAME_CODAS, self._names_taken
        )
        self.entities: list[Entity] = []
        self.facts: list[Fact] = []
        self.entity_facts: list[list[int]] = []
        for t in range(n_topics):
            for _ in range(entities_per_topic):
                other = None
                if rng.random() < 0.35:
                    other = rng.choice([u for u in range(n_topics) if u != t])
                name = names.word(2, 3).capitalize()
                if rng.random() < 0.3:
                    name = f"{name} {names.word(1, 2).capitalize()}"
                entity = Entity(len(self.entities), t, other, name, names.word(2, 3).capitalize())
                self.entities.append(entity)
                self.entity_facts.append(self._make_facts(rng, entity, facts_per_entity))
        self.languages = [self._make_language(i, scripts[i]) for i in range(n_languages)]

    # -- construction -------------------------------------------------------------

    def _rng(self, purpose: str) -> random.Random:
        """An independent stream per purpose: str seeds hash the same in every process."""
        return random.Random(f"contriever-demo:{self.seed}:{purpose}")

    def _make_facts(self, rng: random.Random, entity: Entity, n: int) -> list[int]:
        seen: set[tuple[int, int]] = set()
        ids = []
        while len(ids) < n:
            topic = entity.topic
            if entity.other_topic is not None and rng.random() < 0.3:
                topic = entity.other_topic
            pair = (rng.choice(self.relations), rng.choice(self.topic_attributes[topic]))
            if pair in seen:
                continue
            seen.add(pair)
            fact = Fact(len(self.facts), entity.id, pair[0], pair[1], rng.choice(self.qualities))
            self.facts.append(fact)
            ids.append(fact.id)
        return ids

    def _make_language(self, index: int, script: str = "latin") -> Language:
        rng = self._rng(f"language:{index}")
        onsets = sorted(rng.sample(_ONSETS, 16))
        vowels = sorted(rng.sample(_VOWELS, 7))
        taken = {n.lower() for e in self.entities for n in (*e.name.split(), e.alias)}
        maker = _WordMaker(rng, onsets, vowels, _CODAS, taken)
        function_words = {
            role: tuple(maker.word(1, 1 if role != "q" else 2) for _ in range(n))
            for role, n in _ROLES.items()
        }
        doc_forms, query_forms = [], []
        for concept in self.concepts:
            lo, hi = (2, 3) if concept.kind != "relation" else (1, 2)
            n_doc = 2 if concept.kind == "relation" else rng.choice((1, 1, 2))
            doc_forms.append(tuple(maker.word(lo, hi) for _ in range(n_doc)))
            query_forms.append(tuple(maker.word(lo, hi) for _ in range(rng.choice((1, 2)))))
        table = _SCRIPTS[script]
        if table is not None:  # the same made-up words, written in the other script
            doc_forms = [tuple(w.translate(table) for w in f) for f in doc_forms]
            query_forms = [tuple(w.translate(table) for w in f) for f in query_forms]
            function_words = {
                role: tuple(w.translate(table) for w in ws) for role, ws in function_words.items()
            }
        return Language(
            index,
            tuple(doc_forms),
            tuple(query_forms),
            function_words,
            ("SVO", "SOV", "VSO")[index % 3],
            script,
        )

    def language(self, index: int) -> Language:
        if not 0 <= index < len(self.languages):
            raise InputError(
                f"demo world: language {index} does not exist (n_languages={self.n_languages})"
            )
        return self.languages[index]

    def name_words(self, lang: Language, entity: int, alias: bool = False) -> list[str]:
        """An entity's name (or alias) as `lang` writes it: unchanged in Latin script,
        transliterated letter by letter in another."""
        e = self.entities[entity]
        words = [e.alias] if alias else e.name.split()
        table = _SCRIPTS[lang.script]
        if table is None:
            return words
        return [w.lower().translate(table).capitalize() for w in words]

    # -- planning: what is said (language independent, from the structure stream) --

    def _fact_clause(
        self, rng: random.Random, fact: Fact, full: bool, first: bool, lead: str | None = None
    ) -> Clause:
        entity = self.entities[fact.entity]
        if first or rng.random() < 0.5:
            subject = ("alias" if rng.random() < 0.05 else "name", entity.id)
        else:
            subject = ("pron", -1)
        topic = entity.topic if rng.random() < 0.35 else None
        return Clause(subject, fact.relation, fact.obj, fact.quality if full else None, topic, lead)

    def _background_clause(self, rng: random.Random, topics: Sequence[int]) -> Clause:
        """Topical filler: the words every passage of a topic shares (BM25 distractors)."""
        topic = rng.choice(topics)
        a, b = rng.sample(self.topic_attributes[topic], 2)
        quality = rng.choice(self.qualities) if rng.random() < 0.5 else None
        relation = rng.choice(self.relations)
        trailing = topic if quality is None and rng.random() < 0.4 else None
        return Clause(("np", a), relation, b, quality, trailing)

    def clause_length(self, clause: Clause) -> int:
        kind, ref = clause.subject
        subject = len(self.entities[ref].name.split()) if kind == "name" else 1 + (kind == "np")
        return (
            subject
            + 3
            + (clause.quality is not None)
            + 2 * (clause.topic is not None)
            + (clause.lead is not None)
        )

    def plan_passage(
        self,
        rng: random.Random,
        facts: Sequence[tuple[int, bool]],
        topics: Sequence[int],
        doc_words: Sequence[int],
        restate: float = 0.0,
    ) -> tuple[list[Clause], dict[int, int]]:
        """Clauses stating `facts` (fact id, whole?) about one entity, padded with topical
        clauses to a length in `doc_words`; returns them and the grade of each fact.

        `restate` is the chance that a fact is said again right after ("that is, ..."),
        so pre-training text, rendered with every form, pairs synonyms in one context.
        """
        lo, hi = doc_words
        target = rng.randint(lo, max(lo, hi - _BACKGROUND_MAX_WORDS))
        clauses: list[Clause] = []
        grades: dict[int, int] = {}
        for i, (fact_id, full) in enumerate(facts):
            fact = self.facts[fact_id]
            clauses.append(self._fact_clause(rng, fact, full, first=i == 0))
            if rng.random() < restate:
                clauses.append(self._fact_clause(rng, fact, full, False, lead="equiv"))
            grades[fact_id] = 2 if full else max(grades.get(fact_id, 0), 1)
        n_words = sum(self.clause_length(c) for c in clauses)
        while n_words < target:
            clause = self._background_clause(rng, topics)
            if n_words + self.clause_length(clause) > hi:
                break
            clauses.insert(rng.randint(1, len(clauses)), clause)
            n_words += self.clause_length(clause)
        return clauses, grades

    def plan_question(self, rng: random.Random, fact: Fact, alias_rate: float) -> QuestionPlan:
        return QuestionPlan(
            fact.id,
            rng.random() < alias_rate,
            rng.choice(("qrxe", "exqr", "qerx", "xqer", "eqrx", "qxre")),
            rng.random() < 0.3,
        )

    def _doc_topics(self, entity: Entity, pool: Sequence[int], rng: random.Random) -> tuple:
        """The 1-2 topics a passage is about: the entity's, sometimes a second one."""
        topics = [entity.topic]
        second = entity.other_topic
        if second is None or rng.random() < 0.5:
            second = rng.choice(pool) if rng.random() < 0.3 else None
        if second is not None and second != entity.topic:
            topics.append(second)
        return tuple(topics)

    # -- rendering: which words say it (the language's stream) ----------------------

    @staticmethod
    def _form(
        lang: Language, concept: int, rng: random.Random, mode: str, synonym_rate: float = 0.0
    ) -> str:
        """A surface form: "doc" mostly the primary form, "query" a query-only synonym
        with probability `synonym_rate`, "any" every form alike (pre-training)."""
        if mode == "any":
            return rng.choice(lang.forms(concept))
        if mode == "query" and rng.random() < synonym_rate:
            return rng.choice(lang.query_forms[concept])
        forms = lang.doc_forms[concept]
        return forms[0] if len(forms) == 1 or rng.random() < 0.75 else rng.choice(forms[1:])

    @staticmethod
    def _fw(lang: Language, role: str, rng: random.Random) -> str:
        return rng.choice(lang.function_words[role])

    @staticmethod
    def _sentence(words: list[str], end: str = ".") -> str:
        text = " ".join(words)
        return text[:1].upper() + text[1:] + end

    def render_clause(
        self, lang: Language, clause: Clause, rng: random.Random, mode: str
    ) -> list[str]:
        kind, ref = clause.subject
        if kind in ("name", "alias"):
            subject = self.name_words(lang, ref, kind == "alias")
        elif kind == "pron":
            subject = [self._fw(lang, "pron", rng)]
        else:
            subject = [self._fw(lang, "det", rng), self._form(lang, ref, rng, mode)]
        rel = self._form(lang, clause.relation, rng, mode)
        obj = [self._fw(lang, "det", rng)]
        if clause.quality is not None:
            obj.append(self._form(lang, clause.quality, rng, mode))
        obj.append(self._form(lang, clause.obj, rng, mode))
        if lang.order == "SOV":
            words = [*subject, *obj, rel]
        elif lang.order == "VSO":
            words = [rel, *subject, *obj]
        else:
            words = [*subject, rel, *obj]
        if clause.topic is not None:  # "... in the <topic>"
            words += [self._fw(lang, "prep", rng), self._form(lang, clause.topic, rng, mode)]
        if clause.lead is not None:
            words.insert(0, self._fw(lang, clause.lead, rng))
        return words

    def render_passage(
        self, lang: Language, clauses: Sequence[Clause], rng: random.Random, mode: str = "doc"
    ) -> str:
        return " ".join(self._sentence(self.render_clause(lang, c, rng, mode)) for c in clauses)

    def render_question(
        self,
        lang: Language,
        plan: QuestionPlan,
        rng: random.Random,
        mode: str = "query",
        synonym_rate: float = 0.6,
    ) -> str:
        """The question in the plan's word order; content words may be synonyms."""
        fact = self.facts[plan.fact]
        entity = self.entities[fact.entity]
        parts = {
            "q": [self._fw(lang, "q", rng)],
            "e": self.name_words(lang, entity.id, plan.alias),
            "r": [self._form(lang, fact.relation, rng, mode, synonym_rate)],
            "x": [
                self._form(lang, fact.quality, rng, mode, synonym_rate),
                self._form(lang, fact.obj, rng, mode, synonym_rate),
            ],
        }
        words = [w for key in plan.order for w in parts[key]]
        if plan.ask:
            words.insert(0, self._fw(lang, "ask", rng))
        return self._sentence(words, "?")

    def render_title(self, lang: Language, entity: int, rng: random.Random, mode: str) -> str:
        name = " ".join(self.name_words(lang, entity))
        return f"{name} {self._form(lang, self.entities[entity].topic, rng, mode)}"

    def documents(
        self,
        n_docs: int,
        stream: str,
        topics: Sequence[int] | None = None,
        language: int = 0,
        doc_words: Sequence[int] = (40, 150),
        mode: str = "doc",
        restate: float = 0.0,
        titles: bool = True,
    ) -> list[Document]:
        """`n_docs` passages about random entities of `topics` (all when None), from the
        named random stream; doc ids are "<stream>-<n>". The same stream in another
        language gives the same documents, translated."""
        rng = self._rng(f"documents:{stream}")
        words_rng = self._rng(f"render:documents:{stream}:{language}")
        lang = self.language(language)
        pool = list(range(self.n_topics)) if topics is None else list(topics)
        wanted = set(pool)
        entities = [e for e in self.entities if e.topic in wanted]
        docs = []
        for n in range(n_docs):
            entity, doc_topics, clauses, grades = self._plan_document(
                rng, entities, pool, doc_words, restate
            )
            text = self.render_passage(lang, clauses, words_rng, mode)
            title = self.render_title(lang, entity.id, words_rng, mode) if titles else ""
            docs.append(Document(f"{stream}-{n}", title, text, entity.id, doc_topics, grades))
        return docs

    def _plan_document(
        self,
        rng: random.Random,
        entities: Sequence[Entity],
        pool: Sequence[int],
        doc_words: Sequence[int],
        restate: float,
    ) -> tuple[Entity, tuple[int, ...], list[Clause], dict[int, int]]:
        """A passage about a random entity: 2-4 of its facts, padded with topical clauses."""
        entity = rng.choice(entities)
        facts = self.entity_facts[entity.id]
        chosen = rng.sample(facts, rng.randint(2, min(4, len(facts))))
        picks = [(f, i == 0 or rng.random() < 0.6) for i, f in enumerate(chosen)]
        doc_topics = self._doc_topics(entity, pool, rng)
        clauses, grades = self.plan_passage(rng, picks, doc_topics, doc_words, restate)
        return entity, doc_topics, clauses, grades

    # -- data sets ----------------------------------------------------------------

    def _spec(self, name: str, spec: dict[str, Any], group: bool = False) -> dict[str, Any]:
        where = f"demo data set {name!r}"
        if not isinstance(spec, dict):
            raise InputError(f"{where}: spec must be a mapping, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(_DEFAULT_SPEC) - {"subsets"})
        if unknown:
            raise InputError(f"{where}: unknown keys {unknown} (known: {sorted(_DEFAULT_SPEC)})")
        s = {**_DEFAULT_SPEC, **spec}
        if s["kind"] not in _KINDS:
            raise InputError(f"{where}: kind must be one of {list(_KINDS)}, got {s['kind']!r}")
        if s["kind"] == "group":
            if group:
                raise InputError(f"{where}: groups cannot nest")
            if not isinstance(spec.get("subsets"), dict) or not spec["subsets"]:
                raise InputError(f"{where}: a group needs a non-empty 'subsets' mapping")
            return s
        if "subsets" in spec:
            raise InputError(f"{where}: 'subsets' is only for kind: group")

        def need_int(key: str, least: int, most: int | None = None) -> None:
            v = s[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise InputError(f"{where}: {key} must be an integer >= {least}, got {v!r}")
            if most is not None and v > most:
                raise InputError(f"{where}: {key} must be <= {most}, got {v!r}")

        def need_range(key: str, least: int, gap: int) -> None:
            v = s[key]
            ok = isinstance(v, (list, tuple)) and len(v) == 2
            ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            if not ok or v[0] < least or v[1] < v[0] + gap:
                raise InputError(
                    f"{where}: {key} must be [min, max] with min >= {least} and "
                    f"max >= min + {gap}, got {v!r}"
                )

        def need_rate(key: str) -> None:
            v = s[key]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise InputError(f"{where}: {key} must be a number in [0, 1], got {v!r}")

        need_int("n_docs", 10)
        need_int("n_topics", 1, self.n_topics)
        need_int("language", 0, self.n_languages - 1)
        need_int("max_relevant", 1, 3)
        need_range("doc_words", 20, 10)
        need_range("docs_per_entity", 1, 0)
        need_rate("synonym_rate")
        need_rate("alias_rate")
        if s["doc_style"] not in ("passage", "question"):
            raise InputError(f"{where}: doc_style must be 'passage' or 'question'")
        splits = s["splits"]
        if not isinstance(splits, dict) or not splits:
            raise InputError(f"{where}: splits must map split names to query counts")
        for split, n in splits.items():
            if not isinstance(split, str) or not split.isidentifier():
                raise InputError(f"{where}: bad split name {split!r}")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise InputError(f"{where}: splits.{split} must be a positive integer")
        if s["topics"] is not None:
            t = s["topics"]
            if (
                not isinstance(t, list)
                or not t
                or len(set(t)) != len(t)
                or not all(isinstance(x, int) and 0 <= x < self.n_topics for x in t)
            ):
                raise InputError(
                    f"{where}: topics must be distinct world topic indices < {self.n_topics}"
                )
        for key in ("query_id_prefix", "doc_id_prefix"):
            if not isinstance(s[key], str) or any(c.isspace() for c in s[key]):
                raise InputError(f"{where}: {key} must be a string without whitespace")
        if s["query_id_prefix"] == s["doc_id_prefix"] and s["kind"] == "standard":
            raise InputError(f"{where}: query_id_prefix must differ from doc_id_prefix")
        return s

    def build_dataset(
        self, name: str, spec: dict[str, Any], topics: Sequence[int] | None = None
    ) -> BeirDataset:
        """One (non-group) data set in memory; `topics` overrides the spec's choice."""
        s = self._spec(name, spec)
        if s["kind"] == "group":
            raise InputError(f"demo data set {name!r}: use build_group for kind: group")
        rng = self._rng(f"dataset:{name}")
        if topics is None:
            topics = s["topics"] or sorted(rng.sample(range(self.n_topics), s["n_topics"]))
        if s["kind"] == "self_query":
            return self._self_query_dataset(name, s, list(topics), rng)
        return self._standard_dataset(name, s, list(topics), rng)

    def build_group(self, name: str, spec: dict[str, Any]) -> dict[str, BeirDataset]:
        """A group's subsets (name -> data set), each on its own disjoint topics."""
        s = self._spec(name, spec)
        if s["kind"] != "group":
            raise InputError(f"demo data set {name!r}: build_group needs kind: group")
        defaults = {k: v for k, v in spec.items() if k not in ("kind", "subsets")}
        rng = self._rng(f"group:{name}")
        subs = {}
        for sub, sub_spec in spec["subsets"].items():
            if not isinstance(sub, str) or not sub or "/" in sub or sub.startswith("."):
                raise InputError(f"demo data set {name!r}: bad subset name {sub!r}")
            if sub_spec is not None and not isinstance(sub_spec, dict):
                raise InputError(f"demo data set {name!r}: subsets.{sub} must be a mapping")
            full = {**defaults, **(sub_spec or {})}
            subs[sub] = self._spec(f"{name}/{sub}", full, group=True)
        free = list(range(self.n_topics))
        rng.shuffle(free)
        out = {}
        for sub, sub_spec in subs.items():
            if sub_spec["topics"] is not None:
                topics = sub_spec["topics"]
            else:
                if len(free) < sub_spec["n_topics"]:
                    raise InputError(
                        f"demo data set {name!r}: the world has too few topics for "
                        f"disjoint subsets ({self.n_topics})"
                    )
                topics, free = sorted(free[: sub_spec["n_topics"]]), free[sub_spec["n_topics"] :]
            full = {**defaults, **(spec["subsets"][sub] or {})}
            out[sub] = self.build_dataset(f"{name}/{sub}", full, topics)
        return out

    def _entities_for(self, topics: Sequence[int], rng: random.Random) -> list[Entity]:
        wanted = set(topics)
        entities = [e for e in self.entities if e.topic in wanted]
        rng.shuffle(entities)
        return entities

    @staticmethod
    def _finish(s: dict[str, Any], docs: list[Document], rng: random.Random) -> None:
        """Shuffle the corpus and give numeric ids, so ids reveal nothing of the world."""
        rng.shuffle(docs)
        for n, d in enumerate(docs):
            d.doc_id = f"{s['doc_id_prefix']}{n + 1}"

    def _standard_dataset(
        self, name: str, s: dict[str, Any], topics: list[int], rng: random.Random
    ) -> BeirDataset:
        lang = self.language(s["language"])
        words_rng = self._rng(f"render:dataset:{name}:{s['language']}")
        entities = self._entities_for(topics, rng)
        docs: list[Document] = []
        lo, hi = s["docs_per_entity"]
        extra_max = max(0, s["doc_words"][1] // 12 - 1)
        i = 0
        while len(docs) < s["n_docs"]:
            entity = entities[i % len(entities)]
            i += 1
            facts = self.entity_facts[entity.id]
            for _ in range(min(rng.randint(lo, hi), s["n_docs"] - len(docs))):
                k = 1 + min(rng.randint(1, 3), extra_max, len(facts) - 1)
                chosen = rng.sample(facts, k)
                picks = [(f, j == 0 or rng.random() < 0.6) for j, f in enumerate(chosen)]
                doc_topics = self._doc_topics(entity, topics, rng)
                clauses, grades = self.plan_passage(rng, picks, doc_topics, s["doc_words"])
                text = self.render_passage(lang, clauses, words_rng, "doc")
                title = self.render_title(lang, entity.id, words_rng, "doc") if s["titles"] else ""
                docs.append(Document("", title, text, entity.id, doc_topics, grades))
        self._finish(s, docs, rng)

        by_fact: dict[int, list[Document]] = {}
        for d in docs:
            for f in d.facts:
                by_fact.setdefault(f, []).append(d)
        candidates = [
            f
            for f in sorted(by_fact)
            if len(by_fact[f]) <= s["max_relevant"] and any(d.facts[f] == 2 for d in by_fact[f])
        ]
        rng.shuffle(candidates)
        wanted = sum(s["splits"].values())
        if len(candidates) < wanted:
            raise InputError(
                f"demo data set {name!r}: only {len(candidates)} answerable facts for "
                f"{wanted} queries; raise n_docs or n_topics"
            )
        queries, qrels = [], {split: {} for split in s["splits"]}
        it = iter(candidates)
        n = 0
        for split, count in s["splits"].items():
            for _ in range(count):
                fact = self.facts[next(it)]
                n += 1
                qid = f"{s['query_id_prefix']}{n}"
                plan = self.plan_question(rng, fact, s["alias_rate"])
                text = self.render_question(lang, plan, words_rng, "query", s["synonym_rate"])
                queries.append(Query(qid, text, split, fact.id))
                qrels[split][qid] = {
                    d.doc_id: (d.facts[fact.id] if s["graded"] else 1) for d in by_fact[fact.id]
                }
        return BeirDataset(name, docs, queries, qrels, s["language"])

    def _self_query_dataset(
        self, name: str, s: dict[str, Any], topics: list[int], rng: random.Random
    ) -> BeirDataset:
        """Clusters of paraphrased documents; one member of a cluster is the query, the
        others are its relevant documents (Quora duplicates, ArguAna counter-arguments)."""
        lang = self.language(s["language"])
        words_rng = self._rng(f"render:dataset:{name}:{s['language']}")
        entities = self._entities_for(topics, rng)
        wanted = sum(s["splits"].values())
        n_clusters = wanted + math.ceil(wanted / 4)
        question = s["doc_style"] == "question"
        claimed: dict[int, set[int]] = {}
        clusters: list[tuple[Entity, list[int], int]] = []
        i = 0
        while len(clusters) < n_clusters:
            if i >= len(entities) * 4:
                raise InputError(f"demo data set {name!r}: too few entities; raise n_topics")
            entity = entities[i % len(entities)]
            i += 1
            free = [f for f in self.entity_facts[entity.id] if f not in claimed.get(entity.id, ())]
            if len(free) < 3:
                continue
            shared = rng.sample(free, 1 if question else rng.randint(1, 2))
            claimed.setdefault(entity.id, set()).update(shared)
            clusters.append((entity, shared, rng.randint(2, s["max_relevant"] + 1)))
        if sum(size for *_, size in clusters) > s["n_docs"] * 0.8:
            raise InputError(
                f"demo data set {name!r}: {wanted} queries need more documents; raise n_docs"
            )

        def plan(entity: Entity, shared: list[int]) -> tuple:
            if question:
                return ("question", self.plan_question(rng, self.facts[shared[0]], s["alias_rate"]))
            taken = claimed.get(entity.id, set()) | set(shared)
            free = [f for f in self.entity_facts[entity.id] if f not in taken]
            extra = rng.sample(free, min(len(free), rng.randint(0, 2)))
            picks = [(f, True) for f in shared] + [(f, rng.random() < 0.6) for f in extra]
            doc_topics = self._doc_topics(entity, topics, rng)
            clauses = self.plan_passage(rng, picks, doc_topics, s["doc_words"])[0]
            return ("passage", clauses, doc_topics)

        def render(entity: Entity, shared: list[int], p: tuple) -> Document:
            doc_topics: tuple[int, ...] = (entity.topic,)
            if p[0] == "question":
                text = self.render_question(lang, p[1], words_rng, "any", 0.0)
                title = ""
            else:
                doc_topics = p[2]
                text = self.render_passage(lang, p[1], words_rng, "any")
                title = self.render_title(lang, entity.id, words_rng, "any") if s["titles"] else ""
            return Document("", title, text, entity.id, doc_topics, dict.fromkeys(shared, 1))

        docs: list[Document] = []
        members: list[list[Document]] = []
        for entity, shared, size in clusters:
            group: list[Document] = []
            for _ in range(size):
                p = plan(entity, shared)
                for _attempt in range(5):  # paraphrases, not copies
                    doc = render(entity, shared, p)
                    if all(doc.text != g.text for g in group):
                        break
                group.append(doc)
            members.append(group)
            docs.extend(group)
        j = 0
        while len(docs) < s["n_docs"]:  # distractors: other facts of the same entities
            entity = entities[j % len(entities)]
            j += 1
            free = [f for f in self.entity_facts[entity.id] if f not in claimed.get(entity.id, ())]
            if not free:
                continue
            shared = [rng.choice(free)]
            docs.append(render(entity, shared, plan(entity, shared)))
        self._finish(s, docs, rng)

        order = list(range(len(members)))
        rng.shuffle(order)
        queries, qrels = [], {split: {} for split in s["splits"]}
        it = iter(order)
        for split, count in s["splits"].items():
            for _ in range(count):
                group = members[next(it)]
                q = rng.choice(group)
                queries.append(Query(q.doc_id, q.text, split, None))
                qrels[split][q.doc_id] = {d.doc_id: 1 for d in group if d is not q}
        return BeirDataset(name, docs, queries, qrels, s["language"])

    # -- writing ------------------------------------------------------------------

    def write_beir_dataset(
        self, out_dir: str | Path, spec: dict[str, Any], name: str | None = None
    ) -> Path:
        """Write a data set (or a group's subsets, one folder each) in BEIR layout.

        `name` (default: the folder's name) seeds the data set's random stream. The
        folder appears complete or not at all: it is written beside and renamed.
        """
        out_dir = Path(out_dir)
        name = out_dir.name if name is None else name
        if self._spec(name, spec)["kind"] == "group":
            parts = self.build_group(name, spec)
        else:
            parts = {"": self.build_dataset(name, spec)}
        with _atomic_dir(out_dir) as tmp:
            for sub, ds in parts.items():
                write_beir_folder(ds, tmp / sub if sub else tmp)
        return out_dir

    def write_pretraining_text(
        self,
        path: str | Path,
        n_lines: int,
        language: int = 0,
        doc_words: Sequence[int] = (40, 150),
        stream: str = "pretraining",
    ) -> Path:
        """Unlabelled text, one document per line, using every surface form and often
        restating a fact in other words, so that synonymy is learnable from it."""
        if not isinstance(n_lines, int) or n_lines < 1:
            raise InputError(f"pre-training text: n_lines must be a positive integer: {n_lines!r}")
        lang = self.language(language)
        rng = self._rng(f"glossary:{stream}:{language}")
        docs = self.documents(
            n_lines, f"{stream}:{language}", None, language, doc_words, "any", restate=0.3
        )
        lines = []
        for d in docs:
            text = f"{d.title} {d.text}"
            if rng.random() < 0.2:  # a glossary sentence: "<form> that-is <synonym>"
                concept = rng.randrange(len(self.concepts))
                forms = lang.forms(concept)
                if len(forms) > 1:
                    a, b = rng.sample(forms, 2)
                    text += " " + self._sentence([a, self._fw(lang, "equiv", rng), b])
            lines.append(text)
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    # -- open-domain QA (English passages; questions in any language) ---------------

    def openqa_passages(
        self,
        n_articles: int = 600,
        article_words: Sequence[int] = (150, 300),
        passage_words: int = 100,
    ) -> list[QAPassage]:
        """English "Wikipedia articles", one per entity (titled by its name), each
        stating all the entity's facts, cut into disjoint `passage_words`-word blocks
        as DPR cut Wikipedia; ids 1..N in article order, as in psgs_w100."""
        if not 1 <= n_articles <= len(self.entities):
            raise InputError(
                f"demo open QA: n_articles must be in [1, {len(self.entities)}] (the "
                f"world's entities), got {n_articles!r}"
            )
        rng = self._rng("openqa:articles")
        words_rng = self._rng("render:openqa:articles:0")
        lang = self.language(0)
        pool = list(range(self.n_topics))
        passages: list[QAPassage] = []
        for entity in rng.sample(self.entities, n_articles):
            by_pair = {
                (self.facts[f].relation, self.facts[f].obj): f for f in self.entity_facts[entity.id]
            }
            facts = list(self.entity_facts[entity.id])
            rng.shuffle(facts)
            picks = [(f, i == 0 or rng.random() < 0.7) for i, f in enumerate(facts)]
            doc_topics = self._doc_topics(entity, pool, rng)
            clauses, _ = self.plan_passage(rng, picks, doc_topics, article_words)
            words: list[str] = []
            spans: list[tuple[int, int, int, int]] = []  # start, end, fact, grade
            for clause in clauses:
                sentence = self._sentence(self.render_clause(lang, clause, words_rng, "doc"))
                n = len(sentence.split())
                if clause.subject[0] != "np":  # a fact clause, not topical filler
                    fact = by_pair[(clause.relation, clause.obj)]
                    spans.append(
                        (len(words), len(words) + n, fact, 1 + (clause.quality is not None))
                    )
                words.extend(sentence.split())
            for start in range(0, len(words), passage_words):
                end = start + passage_words
                stated: dict[int, int] = {}
                for s, e, fact, grade in spans:
                    if start <= s and e <= end:
                        stated[fact] = max(stated.get(fact, 0), grade)
                text = " ".join(words[start:end])
                passages.append(QAPassage(len(passages) + 1, entity.name, text, entity.id, stated))
        return passages

    def qa_answers(self, lang: Language, fact: int, answer: str) -> list[str]:
        """Answer strings in `lang`: the entity's name then its alias ("entity"), or
        every "<quality> <object>" phrase of the fact's document forms ("value")."""
        f = self.facts[fact]
        if answer == "entity":
            return [
                " ".join(self.name_words(lang, f.entity)),
                *self.name_words(lang, f.entity, True),
            ]
        return [f"{q} {o}" for q in lang.doc_forms[f.quality] for o in lang.doc_forms[f.obj]]

    def qa_candidates(self, passages: Sequence[QAPassage]) -> dict[str, list[int]]:
        """Facts a question may ask about, by answer kind: those stated whole in a
        passage whose text contains an answer (DPR's has_answer). A "value" question
        names the entity and the relation only, so that pair must identify the fact."""
        lang = self.language(0)
        found: dict[str, set[int]] = {"entity": set(), "value": set()}
        for p in passages:
            tokens = dpr_tokens(p.text)
            for fact, grade in p.facts.items():
                if grade != 2:
                    continue
                for kind, seen in found.items():
                    if fact not in seen and has_answer(tokens, self.qa_answers(lang, fact, kind)):
                        seen.add(fact)

        def unique_relation(fact: int) -> bool:
            f = self.facts[fact]
            relations = [self.facts[g].relation for g in self.entity_facts[f.entity]]
            return relations.count(f.relation) == 1

        found["value"] = {f for f in found["value"] if unique_relation(f)}
        return {kind: sorted(seen) for kind, seen in found.items()}

    def plan_qa_question(
        self, rng: random.Random, fact: Fact, answer: str, alias_rate: float
    ) -> QAPlan:
        """Like plan_question, less the part that is the answer ("full" keeps all)."""
        order = rng.choice(("qrxe", "exqr", "qerx", "xqer", "eqrx", "qxre"))
        drop = {"entity": "e", "value": "x", "full": ""}[answer]
        return QAPlan(
            fact.id,
            answer,
            rng.random() < alias_rate,
            order.replace(drop, "") if drop else order,
            rng.random() < 0.3,
        )

    def render_qa_question(
        self,
        lang: Language,
        plan: QAPlan,
        rng: random.Random,
        synonym_rate: float = 0.6,
        style: str = "nq",
    ) -> str:
        """The question in `lang`, content words often query-only synonyms; style "nq"
        is lower case without "?" (as NQ and MKQA write questions), "trivia" a sentence."""
        fact = self.facts[plan.fact]
        parts = {
            "q": [self._fw(lang, "q", rng)],
            "e": self.name_words(lang, fact.entity, plan.alias),
            "r": [self._form(lang, fact.relation, rng, "query", synonym_rate)],
            "x": [
                self._form(lang, fact.quality, rng, "query", synonym_rate),
                self._form(lang, fact.obj, rng, "query", synonym_rate),
            ],
        }
        words = [w for key in plan.order for w in parts[key]]
        if plan.ask:
            words.insert(0, self._fw(lang, "ask", rng))
        if style == "nq":
            return " ".join(words).lower()
        return self._sentence(words, "?")

    @staticmethod
    def _pick_qa_facts(
        rng: random.Random,
        candidates: dict[str, list[int]],
        n: int,
        entity_share: float,
        where: str,
    ) -> list[tuple[int, str]]:
        """`n` distinct facts with their answer kind, `entity_share` of them "entity"."""
        n_entity = round(n * entity_share)
        picks: list[tuple[int, str]] = []
        taken: set[int] = set()
        for kind, wanted in (("entity", n_entity), ("value", n - n_entity)):
            pool = [f for f in candidates[kind] if f not in taken]
            if len(pool) < wanted:
                raise InputError(
                    f"demo open QA: {where}: only {len(pool)} answerable facts for {wanted} "
                    f"{kind} questions; raise openqa.n_articles"
                )
            chosen = rng.sample(pool, wanted)
            taken.update(chosen)
            picks.extend((f, kind) for f in chosen)
        rng.shuffle(picks)
        return picks

    def openqa_questions(
        self,
        name: str,
        candidates: dict[str, list[int]],
        n_questions: int = 200,
        entity_share: float = 0.6,
        style: str = "nq",
        synonym_rate: float = 0.6,
        alias_rate: float = 0.15,
    ) -> list[dict[str, Any]]:
        """A FiD-style question list: {"id", "question", "answers"} in English."""
        rng = self._rng(f"openqa:questions:{name}")
        words_rng = self._rng(f"render:openqa:questions:{name}:0")
        lang = self.language(0)
        out = []
        picks = self._pick_qa_facts(rng, candidates, n_questions, entity_share, repr(name))
        for i, (fact, kind) in enumerate(picks):
            plan = self.plan_qa_question(rng, self.facts[fact], kind, alias_rate)
            question = self.render_qa_question(lang, plan, words_rng, synonym_rate, style)
            out.append(
                {"id": str(i), "question": question, "answers": self.qa_answers(lang, fact, kind)}
            )
        return out

    def _mkqa_answer(self, lang: Language, fact: int, kind: str) -> dict[str, Any]:
        if kind == "entity":
            entity = self.facts[fact].entity
            names = self.qa_answers(lang, fact, "entity")
            return {
                "type": "entity",
                "entity": f"Q{_WIKIDATA_BASE + entity}",
                "text": names[0],
                "aliases": names[1:],
            }
        if kind == "value":
            phrases = self.qa_answers(lang, fact, "value")
            return {"type": "short_phrase", "text": phrases[0], "aliases": phrases[1:]}
        if kind == "binary":
            return {"type": "binary", "text": "yes"}
        return {"type": kind, "text": None}  # unanswerable, long_answer

    def mkqa_examples(
        self,
        codes: Sequence[str],
        candidates: dict[str, list[int]],
        article_entities: set[int],
        n_questions: int = 150,
        n_dropped: int = 30,
        entity_share: float = 0.6,
        synonym_rate: float = 0.6,
        alias_rate: float = 0.15,
    ) -> list[dict[str, Any]]:
        """MKQA release records: one question plan rendered in every language (`codes`
        by language index), answers in every language (English ones are matched), and
        `n_dropped` unanswerable / binary / long_answer examples in turn."""
        rng = self._rng("openqa:mkqa")
        words_rngs = [self._rng(f"render:openqa:mkqa:{i}") for i in range(len(codes))]
        picks = self._pick_qa_facts(rng, candidates, n_questions, entity_share, "mkqa")
        no_article = [e.id for e in self.entities if e.id not in article_entities]
        for j in range(n_dropped):
            kind = _MKQA_DROPPED[j % len(_MKQA_DROPPED)]
            pool = (
                no_article if kind == "unanswerable" and no_article else range(len(self.entities))
            )
            picks.append((rng.choice(self.entity_facts[rng.choice(pool)]), kind))
        rng.shuffle(picks)
        out, ids = [], set()
        for fact, kind in picks:
            plan_kind = (
                kind if kind in ("entity", "value") else "full" if kind == "binary" else "value"
            )
            plan = self.plan_qa_question(rng, self.facts[fact], plan_kind, alias_rate)
            example_id = rng.getrandbits(62)
            while example_id in ids:
                example_id = rng.getrandbits(62)
            ids.add(example_id)
            queries, answers = {}, {}
            for i, code in enumerate(codes):
                lang = self.language(i)
                queries[code] = self.render_qa_question(
                    lang, plan, words_rngs[i], synonym_rate, "nq"
                )
                answers[code] = [self._mkqa_answer(lang, fact, kind)]
            out.append(
                {
                    "query": queries[codes[0]],
                    "answers": answers,
                    "queries": queries,
                    "example_id": example_id,
                }
            )
        return out

    # -- Mr. TyDi (monolingual retrieval in every language) -----------------------------

    def mrtydi_collection(
        self, name: str, spec: dict[str, Any]
    ) -> tuple[list[dict[str, str]], dict[str, list], dict[str, list]]:
        """One language's Mr. TyDi-like collection from a standard data set spec: docs
        ({"id", "title", "contents"}, ids `<article>#<passage>` with one made-up article
        id per entity, sorted as the release is), topics and qrels by split (numeric
        query ids, 1 upward over the splits in `spec`'s order)."""
        ds = self.build_dataset(name, spec)
        rng = self._rng(f"mrtydi:articles:{name}")
        entities = sorted({d.entity for d in ds.corpus if d.entity is not None})
        article = dict(
            zip(entities, rng.sample(range(1_000, 2_000_000), len(entities)), strict=True)
        )
        passages: dict[int, int] = {}
        new_id: dict[str, tuple[int, int]] = {}
        for d in ds.corpus:
            a = article[d.entity]
            new_id[d.doc_id] = (a, passages.get(a, 0))
            passages[a] = passages.get(a, 0) + 1
        ids = {old: f"{a}#{p}" for old, (a, p) in new_id.items()}
        docs = [
            {"id": ids[d.doc_id], "title": d.title, "contents": d.text}
            for d in sorted(ds.corpus, key=lambda d: new_id[d.doc_id])
        ]
        qid = {q.query_id: str(n) for n, q in enumerate(ds.queries, 1)}
        topics: dict[str, list] = {split: [] for split in ds.qrels}
        for q in ds.queries:
            topics[q.split].append((qid[q.query_id], q.text))
        qrels = {
            split: [
                (qid[q], ids[d], rel)
                for q, rels in by_query.items()
                for d, rel in sorted(rels.items(), key=lambda x: new_id[x[0]])
            ]
            for split, by_query in ds.qrels.items()
        }
        return docs, topics, qrels

    # -- multilingual pre-training text -----------------------------------------------

    def code_switched_text(
        self,
        language: int,
        n_lines: int,
        doc_words: Sequence[int] = (40, 150),
        code_switch: float = 0.3,
    ) -> list[str]:
        """Unlabelled documents in `language`, one per line, with every surface form (as
        write_pretraining_text) and each sentence in English (language 0) with
        probability `code_switch`; restated facts then often sit beside their translation."""
        lang, english = self.language(language), self.language(0)
        rng = self._rng(f"documents:multilingual:{language}")
        words_rng = self._rng(f"render:documents:multilingual:{language}")
        switch_rng = self._rng(f"code-switch:multilingual:{language}")
        pool = list(range(self.n_topics))
        lines = []
        for _ in range(n_lines):
            entity, _, clauses, _ = self._plan_document(
                rng, self.entities, pool, doc_words, restate=0.3
            )
            sentences = [self.render_title(lang, entity.id, words_rng, "any")]
            for clause in clauses:
                switch = language != 0 and switch_rng.random() < code_switch
                words = self.render_clause(english if switch else lang, clause, words_rng, "any")
                sentences.append(self._sentence(words))
            if switch_rng.random() < 0.2:  # a glossary sentence: "<form> that-is <synonym>"
                forms = lang.forms(switch_rng.randrange(len(self.concepts)))
                if len(forms) > 1:
                    a, b = switch_rng.sample(forms, 2)
                    sentences.append(self._sentence([a, self._fw(lang, "equiv", switch_rng), b]))
            lines.append(" ".join(sentences))
        return lines


# ----------------------------------------------------------------------------- files


class _atomic_dir:
    """Build a folder under a temporary sibling name; replace `path` only on success."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.chmod(self.tmp, 0o755)  # mkdtemp makes it private
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_beir_folder(ds: BeirDataset, folder: Path) -> None:
    """corpus.jsonl, queries.jsonl and qrels/<split>.tsv exactly as BEIR lays them out."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(
        _jsonl({"_id": d.doc_id, "title": d.title, "text": d.text} for d in ds.corpus),
        encoding="utf-8",
    )
    (folder / "queries.jsonl").write_text(
        _jsonl({"_id": q.query_id, "text": q.text} for q in ds.queries), encoding="utf-8"
    )
    for split, by_query in ds.qrels.items():
        lines = ["query-id\tcorpus-id\tscore"]
        for qid, docs in by_query.items():
            lines.extend(f"{qid}\t{did}\t{rel}" for did, rel in sorted(docs.items()))
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- entry points


def generate_demo_datasets(
    out_root: str | Path,
    specs: dict[str, dict[str, Any]],
    seed: int,
    world: dict[str, Any] | None = None,
    languages: Sequence[Any] | None = None,
) -> dict[str, Path]:
    """Write every data set of `specs` under `out_root/<name>`; name -> folder.

    `world` holds DemoWorld's size arguments (defaults when None); `languages` lists
    the demo languages (see the module docstring), which a spec's `language` index picks.
    """
    if not isinstance(specs, dict) or not specs:
        raise InputError("demo world: no data sets given")
    out_root = Path(out_root)
    w = make_world(seed, world, languages)
    out = {}
    for name, spec in specs.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise InputError(f"demo world: bad data set name {name!r}")
        out[name] = w.write_beir_dataset(out_root / name, spec or {}, name)
    return out


def generate_pretraining_corpus(
    path: str | Path,
    n_lines: int,
    seed: int,
    world: dict[str, Any] | None = None,
    language: int = 0,
    doc_words: Sequence[int] = (40, 150),
) -> Path:
    """Write pre-training text (one document per line) from the world of `seed`."""
    return make_world(seed, world).write_pretraining_text(path, n_lines, language, doc_words)


def language_codes(languages: Sequence[Any] | None) -> tuple[list[str], list[str]]:
    """(MKQA codes, scripts) by language index from the `languages` list, whose items
    are a code or {"code": ..., "script": ...}; ["en"] alone when None. A list, not a
    mapping, because the order is the language index and the workflow sorts mapping
    keys. Language 0 must be "en" in Latin script: it writes the passages."""
    if languages is None:
        return ["en"], ["latin"]
    if not isinstance(languages, (list, tuple)) or not languages:
        raise InputError("demo world: languages must be a list of MKQA codes or {code, script}")
    codes, scripts = [], []
    for i, item in enumerate(languages):
        where = f"demo world: languages[{i}]"
        opts = {"code": item} if isinstance(item, str) else item
        if not isinstance(opts, dict) or "code" not in opts or set(opts) - {"code", "script"}:
            raise InputError(f"{where}: must be a code or a mapping with keys code, script")
        code, script = opts["code"], opts.get("script", "latin")
        if code not in MKQA_LANGUAGES:
            raise InputError(f"{where}: {code!r} is not an MKQA code (codes: {MKQA_LANGUAGES})")
        if code in codes:
            raise InputError(f"{where}: {code!r} is listed twice")
        if script not in _SCRIPTS:
            raise InputError(f"{where}: script must be one of {sorted(_SCRIPTS)}, got {script!r}")
        codes.append(code)
        scripts.append(script)
    if codes[0] != "en" or scripts[0] != "latin":
        raise InputError("demo world: the first of languages must be en (Latin script)")
    return codes, scripts


def make_world(
    seed: int, world: dict[str, Any] | None = None, languages: Sequence[Any] | None = None
) -> DemoWorld:
    """A DemoWorld from a config mapping (and the `languages` list, which sets
    n_languages and the scripts), naming unknown keys in the error."""
    world = dict(world or {})
    if languages is not None:
        _, scripts = language_codes(languages)
        if world.get("n_languages", len(scripts)) != len(scripts):
            raise InputError("demo world: world.n_languages disagrees with languages")
        world.update(n_languages=len(scripts), scripts=scripts)
    known = {
        "n_topics",
        "attributes_per_topic",
        "entities_per_topic",
        "facts_per_entity",
        "n_relations",
        "n_qualities",
        "n_languages",
    }
    unknown = sorted(set(world) - known - {"scripts"})
    if unknown:
        raise InputError(f"demo world: unknown keys {unknown} (known: {sorted(known)})")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"demo world: seed must be an integer, got {seed!r}")
    return DemoWorld(seed, **world)


_OPENQA_DEFAULTS: dict[str, Any] = {
    "n_articles": 600,
    "article_words": [150, 300],
    "passage_words": 100,
    "question_sets": {"demo-nq": {}},
    "mkqa": {},
}
_QUESTION_DEFAULTS: dict[str, Any] = {
    "n_questions": 200,
    "entity_share": 0.6,
    "style": "nq",
    "synonym_rate": 0.6,
    "alias_rate": 0.15,
}
_MKQA_DEFAULTS: dict[str, Any] = {
    "n_questions": 150,
    "n_dropped": 30,
    "entity_share": 0.6,
    "synonym_rate": 0.6,
    "alias_rate": 0.15,
}
_MULTILINGUAL_DEFAULTS: dict[str, Any] = {"lines": 1500, "doc_words": [40, 150], "code_switch": 0.3}


def _checked(where: str, spec: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """`spec` over `defaults`, each value checked by the type of its default."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise InputError(f"{where}: must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown} (known: {sorted(defaults)})")
    s = {**defaults, **spec}
    for key, default in defaults.items():
        v = s[key]
        if isinstance(default, bool) or isinstance(v, bool):
            ok = isinstance(v, bool) == isinstance(default, bool)
        elif isinstance(default, int):
            ok = isinstance(v, int) and v >= (0 if key == "n_dropped" else 1)
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and 0 <= v <= 1
        elif isinstance(default, dict):
            ok = v is None or isinstance(v, dict)  # None: none of them
        elif isinstance(default, list):
            ok = isinstance(v, (list, tuple)) and len(v) == 2
            ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            ok = ok and 10 <= v[0] <= v[1]
        else:
            ok = isinstance(v, type(default))
        if not ok:
            raise InputError(f"{where}: bad value for {key}: {v!r}")
    return s


def write_dpr_passages(passages: Sequence[QAPassage], path: str | Path) -> Path:
    """psgs_w100.tsv's layout: header id/text/title, csv-module tab-separated rows."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "text", "title"])
    writer.writerows([p.pid, p.text, p.title] for p in passages)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def generate_openqa(
    out_dir: str | Path,
    spec: dict[str, Any] | None,
    seed: int,
    world: dict[str, Any] | None = None,
    languages: Sequence[Any] | None = None,
) -> dict[str, Path]:
    """Write the open-domain QA folder: passages.tsv (DPR psgs_w100 layout), one
    <name>.json per question set (FiD's list of {"id", "question", "answers"}) and
    mkqa.jsonl (MKQA's release format, one record per line); file name -> path."""
    s = _checked("demo open QA", spec, _OPENQA_DEFAULTS)
    sets = s["question_sets"] or {}
    for name in sets:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
            raise InputError(f"demo open QA: bad question set name {name!r}")
        if name == "mkqa":
            raise InputError("demo open QA: question set name 'mkqa' is taken by mkqa.jsonl")
    sets = {
        name: _checked(f"demo open QA: question_sets.{name}", v, _QUESTION_DEFAULTS)
        for name, v in sets.items()
    }
    for name, q in sets.items():
        if q["style"] not in ("nq", "trivia"):
            raise InputError(f"demo open QA: question_sets.{name}.style must be nq or trivia")
    mkqa = None if s["mkqa"] is None else _checked("demo open QA: mkqa", s["mkqa"], _MKQA_DEFAULTS)
    codes, _ = language_codes(languages)
    w = make_world(seed, world, languages)

    passages = w.openqa_passages(s["n_articles"], s["article_words"], s["passage_words"])
    candidates = w.qa_candidates(passages)
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        write_dpr_passages(passages, tmp / "passages.tsv")
        for name, q in sets.items():
            questions = w.openqa_questions(name, candidates, **q)
            (tmp / f"{name}.json").write_text(
                json.dumps(questions, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
            )
        if mkqa is not None:
            articles = {p.entity for p in passages}
            records = w.mkqa_examples(codes, candidates, articles, **mkqa)
            (tmp / "mkqa.jsonl").write_text(_jsonl(records), encoding="utf-8")
    return {p.name: p for p in sorted(out_dir.iterdir())}


def generate_multilingual_pretraining(
    folder: str | Path,
    spec: dict[str, Any] | None,
    seed: int,
    world: dict[str, Any] | None = None,
    languages: Sequence[Any] | None = None,
) -> dict[str, Path]:
    """Write mling-<code>.txt per language (code-switched documents, one per line) and
    multilingual.txt, their lines interleaved language by language (the text a
    multilingual tiny BERT learns its vocabulary from); stream name -> path."""
    s = _checked("demo multilingual pre-training", spec, _MULTILINGUAL_DEFAULTS)
    codes, _ = language_codes(languages)
    w = make_world(seed, world, languages)
    texts = {
        code: w.code_switched_text(i, s["lines"], s["doc_words"], s["code_switch"])
        for i, code in enumerate(codes)
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for code, lines in texts.items():
        out[f"mling-{code}"] = path = folder / f"mling-{code}.txt"
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mixed = [line for row in zip(*texts.values(), strict=True) for line in row]
    out["multilingual"] = path = folder / "multilingual.txt"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(mixed) + "\n", encoding="utf-8")
    return out


_MRTYDI_DEFAULTS: dict[str, Any] = {
    "n_docs": 250,
    "splits": {"train": 120, "dev": 30, "test": 60},
    "n_topics": 6,
    "max_relevant": 2,
    "doc_words": [40, 120],
    "synonym_rate": 0.6,
    "alias_rate": 0.15,
}


def mrtydi_languages(spec_languages: Any, codes: Sequence[str]) -> list[str]:
    """The Mr. TyDi codes to write, checked against the world's `languages` (codes)."""
    where = "demo Mr. TyDi: languages"
    available = [c for c in codes if c in MRTYDI_LANGUAGES]
    if spec_languages is None:
        if not available:
            raise InputError(f"{where}: none of the demo languages {codes} is a Mr. TyDi one")
        return available
    if not isinstance(spec_languages, (list, tuple)) or not spec_languages:
        raise InputError(f"{where}: must be a non-empty list of codes, got {spec_languages!r}")
    for code in spec_languages:
        if code not in MRTYDI_LANGUAGES:
            raise InputError(
                f"{where}: {code!r} is not a Mr. TyDi language ({', '.join(MRTYDI_LANGUAGES)})"
            )
        if code not in codes:
            raise InputError(f"{where}: {code!r} is not one of demo_world.languages {codes}")
    if len(set(spec_languages)) != len(spec_languages):
        raise InputError(f"{where}: a language is listed twice in {spec_languages}")
    return list(spec_languages)


def generate_mrtydi(
    out_dir: str | Path,
    spec: dict[str, Any] | None,
    seed: int,
    world: dict[str, Any] | None = None,
    languages: Sequence[Any] | None = None,
) -> dict[str, Path]:
    """Write `mrtydi-v1.1-<name>.tar.gz` per language into `out_dir` (Mr. TyDi's release
    layout, see mrtydi.write_archive); code -> archive path. Each language's collection
    is its own standard data set (random stream "mrtydi-<code>"), so adding a language
    changes no other."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise InputError(f"demo Mr. TyDi: must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    wanted = spec.pop("languages", None)
    s = _checked("demo Mr. TyDi", spec, _MRTYDI_DEFAULTS)
    splits = s["splits"]
    if not splits or not all(isinstance(k, str) for k in splits):
        raise InputError("demo Mr. TyDi: splits must map split names to question counts")
    bad = sorted(set(splits) - set(MRTYDI_SPLITS))
    if bad or "test" not in splits:
        raise InputError(
            f"demo Mr. TyDi: splits must be among {list(MRTYDI_SPLITS)} and include test, "
            f"got {sorted(splits)}"
        )
    codes, _ = language_codes(languages)
    chosen = mrtydi_languages(wanted, codes)
    w = make_world(seed, world, languages)
    ordered = {split: splits[split] for split in MRTYDI_SPLITS if split in splits}
    collections = {}
    for code in chosen:
        dataset = {
            "n_docs": s["n_docs"],
            "splits": ordered,
            "n_topics": s["n_topics"],
            "language": codes.index(code),
            "max_relevant": s["max_relevant"],
            "doc_words": s["doc_words"],
            "synonym_rate": s["synonym_rate"],
            "alias_rate": s["alias_rate"],
        }
        collections[code] = w.mrtydi_collection(f"mrtydi-{code}", dataset)
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        for code, (docs, topics, qrels) in collections.items():
            root = archive_root(code)
            write_archive(tmp / f"{root}.tar.gz", root, docs, topics, qrels)
    return {code: out_dir / f"{archive_root(code)}.tar.gz" for code in chosen}
