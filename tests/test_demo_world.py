"""The synthetic demo world: reproducible, valid BEIR layout, and realistic difficulty."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from contriever_repro.data.demo_world import (
    DEFAULT_DEMO_SPECS,
    DemoWorld,
    generate_demo_datasets,
    generate_mrtydi,
    generate_multilingual_pretraining,
    generate_openqa,
    generate_pretraining_corpus,
    make_world,
)
from contriever_repro.errors import InputError

SEED = 7


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    start = time.perf_counter()
    out = generate_demo_datasets(tmp_path_factory.mktemp("demo"), DEFAULT_DEMO_SPECS, SEED)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"generation took {elapsed:.1f} s"
    return out


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def beir_folders(demo: dict[str, Path]) -> list[Path]:
    """Every BEIR-format folder: data sets, and the sub-forums of grouped ones."""
    folders = []
    for path in demo.values():
        if (path / "corpus.jsonl").exists():
            folders.append(path)
        else:
            folders.extend(sorted(p for p in path.iterdir() if p.is_dir()))
    return folders


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["query-id", "corpus-id", "score"], path
    qrels: dict[str, dict[str, int]] = {}
    for row in rows[1:]:
        assert len(row) == 3, (path, row)
        assert row[1] not in qrels.get(row[0], {}), f"duplicate pair in {path}"
        qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def test_every_spec_is_written(demo):
    assert set(demo) == set(DEFAULT_DEMO_SPECS)
    assert sorted(p.name for p in demo["demo-cqadupstack"].iterdir()) == [
        "android",
        "gaming",
        "unix",
    ]
    assert not (demo["demo-cqadupstack"] / "corpus.jsonl").exists()
    msmarco = sorted(p.name for p in (demo["demo-msmarco"] / "qrels").iterdir())
    assert msmarco == ["dev.tsv", "train.tsv"]


def test_same_seed_same_bytes_and_other_seed_differs(demo, tmp_path):
    again = generate_demo_datasets(tmp_path / "again", DEFAULT_DEMO_SPECS, SEED)
    for name, path in demo.items():
        assert files_of(path) == files_of(again[name]), name
    other = generate_demo_datasets(tmp_path / "other", {"x": {"n_docs": 200}}, SEED + 1)
    same = generate_demo_datasets(tmp_path / "same", {"x": {"n_docs": 200}}, SEED)
    assert files_of(other["x"]) != files_of(same["x"])


def test_same_bytes_in_other_processes(demo, tmp_path):
    """No output depends on str hashing (PYTHONHASHSEED) or other per-process state."""
    code = (
        "import sys; from contriever_repro.data.demo_world import *; "
        "generate_demo_datasets(sys.argv[1], "
        "{'demo-quora': DEFAULT_DEMO_SPECS['demo-quora']}, int(sys.argv[2]))"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = tmp_path / hash_seed
        subprocess.run([sys.executable, "-c", code, str(out), str(SEED)], env=env, check=True)
        assert files_of(out / "demo-quora") == files_of(demo["demo-quora"])


def test_data_sets_do_not_depend_on_each_other(demo, tmp_path):
    """A data set's bytes depend only on (seed, name, spec): editing another leaves it."""
    alone = generate_demo_datasets(
        tmp_path, {"demo-scifact": DEFAULT_DEMO_SPECS["demo-scifact"]}, SEED
    )
    assert files_of(alone["demo-scifact"]) == files_of(demo["demo-scifact"])


def test_beir_layout(demo):
    for folder in beir_folders(demo):
        corpus = read_jsonl(folder / "corpus.jsonl")
        queries = read_jsonl(folder / "queries.jsonl")
        assert all(list(d) == ["_id", "title", "text"] for d in corpus), folder
        assert all(list(q) == ["_id", "text"] for q in queries), folder
        doc_ids = [d["_id"] for d in corpus]
        query_ids = [q["_id"] for q in queries]
        assert len(set(doc_ids)) == len(doc_ids) and len(set(query_ids)) == len(query_ids)
        assert all(d["text"].strip() for d in corpus) and all(q["text"].strip() for q in queries)
        assert 300 <= len(corpus) <= 1500, folder
        seen: set[str] = set()
        for split_file in sorted((folder / "qrels").glob("*.tsv")):
            qrels = read_qrels(split_file)
            assert 50 <= len(qrels) <= 300, split_file
            assert not seen & set(qrels), f"a query is in two splits of {folder}"
            seen |= set(qrels)
            for qid, rel in qrels.items():
                assert qid in set(query_ids)
                assert set(rel) <= set(doc_ids)
                assert 1 <= len(rel) <= 3
                assert set(rel.values()) <= {1, 2}
        assert seen == set(query_ids), "every query is judged, every judged query exists"


def test_passage_lengths(demo):
    for folder in beir_folders(demo):
        if folder.name == "demo-quora":
            continue
        spec = {**DEFAULT_DEMO_SPECS.get(folder.name, DEFAULT_DEMO_SPECS["demo-cqadupstack"])}
        lo, hi = spec.get("doc_words", [40, 150])
        lengths = [len(d["text"].split()) for d in read_jsonl(folder / "corpus.jsonl")]
        assert lo <= min(lengths) and max(lengths) <= hi, folder


def test_graded_relevance(demo):
    qrels = read_qrels(demo["demo-scifact"] / "qrels" / "test.tsv")
    scores = Counter(s for rel in qrels.values() for s in rel.values())
    assert scores[1] > 0 and scores[2] > 0
    assert all(2 in rel.values() for rel in qrels.values())
    counts = Counter(len(rel) for rel in qrels.values())
    assert counts[1] and counts[2], "queries with one and with several relevant docs"
    ungraded = read_qrels(demo["demo-msmarco"] / "qrels" / "dev.tsv")
    assert {s for rel in ungraded.values() for s in rel.values()} == {1}


def test_self_query_sets_use_corpus_documents_as_queries(demo):
    for name in ("demo-quora", "demo-arguana"):
        folder = demo[name]
        corpus = {d["_id"]: d for d in read_jsonl(folder / "corpus.jsonl")}
        queries = read_jsonl(folder / "queries.jsonl")
        for q in queries:
            assert q["_id"] in corpus
            assert corpus[q["_id"]]["text"] == q["text"]
        for split_file in (folder / "qrels").glob("*.tsv"):
            for qid, rel in read_qrels(split_file).items():
                assert qid not in rel, "a query is never judged relevant to itself"
                assert all(corpus[d]["text"] != corpus[qid]["text"] for d in rel)
    assert all(not d["title"] for d in read_jsonl(demo["demo-quora"] / "corpus.jsonl"))


def test_standard_query_ids_never_collide_with_doc_ids(demo):
    folder = demo["demo-scifact"]
    doc_ids = {d["_id"] for d in read_jsonl(folder / "corpus.jsonl")}
    assert not doc_ids & {q["_id"] for q in read_jsonl(folder / "queries.jsonl")}


def test_group_subsets_have_disjoint_topics():
    world = DemoWorld(SEED)
    subsets = world.build_group("g", DEFAULT_DEMO_SPECS["demo-cqadupstack"])
    entity_topics = [{world.entities[d.entity].topic for d in ds.corpus} for ds in subsets.values()]
    for i, a in enumerate(entity_topics):
        for b in entity_topics[i + 1 :]:
            assert not a & b


def bm25_ranker(corpus: dict[str, list[str]]):
    """Plain BM25 (k1=1.2, b=0.75) so the test measures term matching independently."""
    n = len(corpus)
    df = Counter(w for toks in corpus.values() for w in set(toks))
    avg = sum(map(len, corpus.values())) / n
    idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
    tfs = {d: Counter(toks) for d, toks in corpus.items()}

    def rank(query: list[str]) -> list[str]:
        def score(d: str) -> float:
            tf, norm = tfs[d], 1.2 * (0.25 + 0.75 * len(corpus[d]) / avg)
            return sum(idf[w] * tf[w] * 2.2 / (tf[w] + norm) for w in query if w in tf)

        return sorted(corpus, key=lambda d: (-score(d), d))

    return rank


@pytest.mark.parametrize("name,split", [("demo-scifact", "test"), ("demo-msmarco", "dev")])
def test_queries_paraphrase_their_documents(demo, name, split):
    folder = demo[name]
    corpus = {
        d["_id"]: words(f"{d['title']} {d['text']}") for d in read_jsonl(folder / "corpus.jsonl")
    }
    queries = {q["_id"]: words(q["text"]) for q in read_jsonl(folder / "queries.jsonl")}
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    rank = bm25_ranker(corpus)
    missing, top1 = [], 0
    for qid, rel in qrels.items():
        vocab = set().union(*(corpus[d] for d in rel))
        missing.append(sum(w not in vocab for w in queries[qid]) / len(queries[qid]))
        top1 += rank(queries[qid])[0] in rel
    assert sum(missing) / len(missing) > 0.3, "queries use words their documents lack"
    share = top1 / len(qrels)
    assert 0.4 < share < 0.95, f"BM25 should work but not perfectly: top-1 {share:.2f}"


def test_query_only_synonyms_are_in_pretraining_text_not_in_corpora(demo, tmp_path):
    world = DemoWorld(SEED)
    lang = world.language(0)
    query_only = {w for forms in lang.query_forms for w in forms}
    path = generate_pretraining_corpus(tmp_path / "pre.txt", 400, SEED)
    pre_words = set(words(path.read_text(encoding="utf-8")))
    assert len(query_only & pre_words) > 0.5 * len(query_only)
    corpus_words = set(words((demo["demo-scifact"] / "corpus.jsonl").read_text()))
    assert not query_only & corpus_words


def test_pretraining_text_is_deterministic_one_document_per_line(tmp_path):
    a = generate_pretraining_corpus(tmp_path / "a.txt", 300, SEED)
    b = generate_pretraining_corpus(tmp_path / "b.txt", 300, SEED)
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 301
    assert all(30 <= len(line.split()) <= 250 for line in lines[:-1])
    assert len(set(lines[:-1])) == 300


def test_languages_render_the_same_world_with_other_words():
    one = DemoWorld(SEED)
    three = DemoWorld(SEED, n_languages=3)
    assert one.language(0) == three.language(0), "adding languages changes nothing before"
    l0, l2 = three.language(0), three.language(2)
    assert l2.order != l0.order
    assert not {w for f in l0.doc_forms for w in f} & {w for f in l2.doc_forms for w in f}
    spec = {"n_docs": 300, "splits": {"test": 50}}
    ds0 = three.build_dataset("x", {**spec, "language": 0})
    ds2 = three.build_dataset("x", {**spec, "language": 2})
    assert [d.facts for d in ds0.corpus] == [d.facts for d in ds2.corpus]
    assert ds0.corpus[0].text != ds2.corpus[0].text
    with pytest.raises(InputError, match="language"):
        one.build_dataset("x", {**spec, "language": 1})


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"n_doc": 10}, "unknown keys"),
        ({"kind": "tree"}, "kind"),
        ({"splits": {"test": 0}}, "splits.test"),
        ({"n_docs": 20, "splits": {"test": 200}}, "answerable"),
        ({"doc_words": [40, 30]}, "doc_words"),
        ({"kind": "group"}, "subsets"),
        ({"kind": "group", "n_topics": 20, "subsets": {"a": {}, "b": {}}}, "too few topics"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, spec, message):
    with pytest.raises(InputError, match=message):
        generate_demo_datasets(tmp_path, {"bad": spec}, SEED)
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------- languages, open QA, MKQA

# sha256 over the files below, generated by the code before languages, open QA and MKQA
# were added: the English data sets and text must never change (update it only for a
# deliberate change of the world).
GOLDEN_SHA256 = "4a6d601eddc5a535c007c3e2ecffc3d33654e5965cd76329b2a629fc49d834de"
GOLDEN_SPECS = {
    "std": {"n_docs": 200, "splits": {"test": 20, "train": 10}, "graded": True},
    "sq": {
        "kind": "self_query",
        "n_docs": 150,
        "splits": {"test": 20},
        "doc_style": "question",
        "titles": False,
    },
    "grp": {
        "kind": "group",
        "n_docs": 120,
        "splits": {"test": 10},
        "n_topics": 2,
        "subsets": {"a": {}, "b": {}},
    },
}
LANGUAGES = ["en", "fi", {"code": "ru", "script": "cyrillic"}, {"code": "ar", "script": "arabic"}]
CODES = ["en", "fi", "ru", "ar"]
OPENQA_SPEC = {
    "n_articles": 250,
    "question_sets": {
        "demo-nq": {"n_questions": 60, "entity_share": 0.7, "synonym_rate": 0.5},
        "demo-tqa": {"n_questions": 40, "entity_share": 0.4, "style": "trivia"},
    },
    "mkqa": {"n_questions": 40, "n_dropped": 9},
}
MULTILINGUAL_SPEC = {"lines": 120, "code_switch": 0.3}


def tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("languages", [None, LANGUAGES])
def test_english_outputs_are_those_of_the_code_before_languages(tmp_path, languages):
    generate_demo_datasets(tmp_path / "ds", GOLDEN_SPECS, SEED, None, languages)
    generate_pretraining_corpus(tmp_path / "text.txt", 100, SEED)
    make_world(SEED, None, languages).write_pretraining_text(
        tmp_path / "web.txt", 50, doc_words=(15, 60), stream="pretraining-web"
    )
    assert tree_sha256(tmp_path) == GOLDEN_SHA256


@pytest.fixture(scope="module")
def openqa(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("openqa")
    start = time.perf_counter()
    generate_openqa(root / "openqa", OPENQA_SPEC, SEED, None, LANGUAGES)
    generate_multilingual_pretraining(
        root / "pretraining", MULTILINGUAL_SPEC, SEED, None, LANGUAGES
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"generation took {elapsed:.1f} s"
    return root


def qa_tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def contains(tokens: list[str], answer: str) -> bool:
    a = qa_tokens(answer)
    return any(tokens[i : i + len(a)] == a for i in range(len(tokens) - len(a) + 1))


def read_passages(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def mkqa_kept(records: list[dict]) -> list[dict]:
    """The authors' filter: the (last) English answer's type decides."""
    dropped = {"unanswerable", "binary", "long_answer"}
    return [r for r in records if r["answers"]["en"][-1]["type"] not in dropped]


def test_openqa_is_deterministic(openqa, tmp_path):
    generate_openqa(tmp_path / "openqa", OPENQA_SPEC, SEED, None, LANGUAGES)
    generate_multilingual_pretraining(
        tmp_path / "pretraining", MULTILINGUAL_SPEC, SEED, None, LANGUAGES
    )
    assert files_of(tmp_path) == files_of(openqa)
    other = generate_openqa(tmp_path / "other", OPENQA_SPEC, SEED + 1, None, LANGUAGES)
    assert other["passages.tsv"].read_bytes() != (openqa / "openqa/passages.tsv").read_bytes()


def test_passages_have_psgs_w100_layout(openqa):
    rows = read_passages(openqa / "openqa" / "passages.tsv")
    assert rows[0] == ["id", "text", "title"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, len(rows))]
    assert 500 <= len(rows) - 1 <= 3000
    assert all(len(r) == 3 and r[1] and r[2] for r in rows[1:])
    lengths = [len(r[1].split()) for r in rows[1:]]
    assert max(lengths) == 100 and Counter(lengths)[100] > len(lengths) / 2


def test_every_question_is_answered_in_some_passage(openqa):
    passages = [qa_tokens(r[1]) for r in read_passages(openqa / "openqa" / "passages.tsv")[1:]]
    sets = {
        n: json.loads((openqa / "openqa" / f"{n}.json").read_text())
        for n in OPENQA_SPEC["question_sets"]
    }
    records = [json.loads(line) for line in (openqa / "openqa" / "mkqa.jsonl").open()]
    english = [[a["text"], *a["aliases"]] for r in mkqa_kept(records) for a in r["answers"]["en"]]
    for name, questions in sets.items():
        assert len(questions) == OPENQA_SPEC["question_sets"][name]["n_questions"]
        assert all(list(q) == ["id", "question", "answers"] for q in questions)
        assert all(isinstance(a, str) and a for q in questions for a in q["answers"])
        assert len({q["id"] for q in questions}) == len(questions)
        assert sum(any(" " in a for a in q["answers"]) for q in questions) > len(questions) / 4
    having: dict[str, list[list[str]]] = {}  # token -> passages with it
    for tokens in passages:
        for t in set(tokens):
            having.setdefault(t, []).append(tokens)
    for answers in [q["answers"] for qs in sets.values() for q in qs] + english:
        found = (contains(p, a) for a in answers for p in having.get(qa_tokens(a)[0], []))
        assert any(found), answers
    nq = sets["demo-nq"][0]["question"]
    assert nq == nq.lower() and not nq.endswith("?")
    assert all(q["question"].endswith("?") for q in sets["demo-tqa"])


def test_mkqa_has_the_release_format(openqa):
    records = [json.loads(line) for line in (openqa / "openqa" / "mkqa.jsonl").open()]
    assert len(records) == 49
    assert len({r["example_id"] for r in records}) == 49
    types = Counter()
    for r in records:
        assert list(r) == ["query", "answers", "queries", "example_id"]
        assert isinstance(r["example_id"], int)
        assert list(r["queries"]) == CODES and list(r["answers"]) == CODES
        assert r["query"] == r["queries"]["en"]
        for code in CODES:
            for a in r["answers"][code]:
                if a["type"] in ("unanswerable", "long_answer"):
                    assert a == {"type": a["type"], "text": None}
                elif a["type"] != "binary":
                    assert isinstance(a["text"], str) and isinstance(a["aliases"], list)
        types[r["answers"]["en"][0]["type"]] += 1
    assert types["unanswerable"] == types["binary"] == types["long_answer"] == 3
    assert types["entity"] + types["short_phrase"] == len(mkqa_kept(records)) == 40


def test_other_scripts_share_no_words_with_english(openqa):
    records = [json.loads(line) for line in (openqa / "openqa" / "mkqa.jsonl").open()]
    english = {t for r in records for t in words(r["queries"]["en"])}
    latin = {t for r in records for t in words(r["queries"]["fi"])}
    assert latin & english, "Latin-script languages keep the entity names"
    for code in ("ru", "ar"):
        other = {t for r in records for t in words(r["queries"][code])}
        assert len(other & english) <= 1, code
        assert not re.search("[a-z]", " ".join(r["queries"][code] for r in records).lower())
    assert re.search("[\u0400-\u04ff]", records[0]["queries"]["ru"])
    assert re.search("[\u0600-\u06ff]", records[0]["queries"]["ar"])


def test_bm25_answers_english_questions_imperfectly(openqa):
    rows = read_passages(openqa / "openqa" / "passages.tsv")[1:]
    rank = bm25_ranker({r[0]: words(f"{r[2]} {r[1]}") for r in rows})
    tokens = {r[0]: qa_tokens(r[1]) for r in rows}
    questions = json.loads((openqa / "openqa" / "demo-nq.json").read_text())
    hits = sum(
        any(contains(tokens[p], a) for p in rank(words(q["question"]))[:20] for a in q["answers"])
        for q in questions
    )
    assert 0.3 < hits / len(questions) < 0.95


def test_multilingual_text_is_code_switched_per_language(openqa):
    folder = openqa / "pretraining"
    per = {c: (folder / f"mling-{c}.txt").read_text(encoding="utf-8").splitlines() for c in CODES}
    assert all(len(lines) == MULTILINGUAL_SPEC["lines"] for lines in per.values())
    mixed = (folder / "multilingual.txt").read_text(encoding="utf-8").splitlines()
    assert mixed[: len(CODES)] == [per[c][0] for c in CODES]
    assert len(mixed) == len(CODES) * MULTILINGUAL_SPEC["lines"]
    ru = " ".join(per["ru"])
    assert re.search("[\u0400-\u04ff]", ru) and re.search("[a-z]", ru), "Cyrillic with English"
    assert not re.search("[\u0400-\u04ff\u0600-\u06ff]", " ".join(per["en"]))


def test_multilingual_vocabulary_covers_the_other_scripts(openqa):
    from contriever_repro.models.tiny_bert import (
        build_tokenizer,
        count_words,
        learn_wordpiece_vocab,
    )

    text = (openqa / "pretraining" / "multilingual.txt").read_text(encoding="utf-8")
    vocab = learn_wordpiece_vocab(count_words(text.splitlines()), 3000)
    tokenizer = build_tokenizer(vocab)
    records = [json.loads(line) for line in (openqa / "openqa" / "mkqa.jsonl").open()]
    for code in CODES:
        ids = tokenizer([r["queries"][code] for r in records])["input_ids"]
        assert not any(tokenizer.unk_token_id in row for row in ids), code


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda p: generate_openqa(p, {"n_article": 5}, SEED), "unknown keys"),
        (lambda p: generate_openqa(p, {"n_articles": 5000}, SEED), "n_articles"),
        (lambda p: generate_openqa(p, {"n_articles": 3}, SEED), "answerable facts"),
        (lambda p: generate_openqa(p, {"question_sets": {"x": {"style": "q"}}}, SEED), "style"),
        (lambda p: generate_openqa(p, {}, SEED, None, ["fi", "en"]), "first of languages"),
        (lambda p: generate_openqa(p, {}, SEED, None, ["en", "xx"]), "MKQA code"),
        (lambda p: generate_openqa(p, {}, SEED, None, {"en": {}}), "list"),
        (
            lambda p: generate_openqa(p, {}, SEED, None, ["en", {"code": "ru", "script": "x"}]),
            "script",
        ),
        (lambda p: generate_multilingual_pretraining(p, {"code_switch": 2}, SEED), "code_switch"),
    ],
)
def test_bad_openqa_specs_name_the_problem(tmp_path, call, message):
    with pytest.raises(InputError, match=message):
        call(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- Mr. TyDi

MRTYDI_SPEC = {"languages": ["fi", "ru", "ar"], "n_docs": 150, "splits": {"train": 40, "test": 30}}
MRTYDI_SCRIPTS = {"fi": "[a-z]", "ru": "[\u0400-\u04ff]", "ar": "[\u0600-\u06ff]"}


@pytest.fixture(scope="module")
def mrtydi(tmp_path_factory) -> dict[str, Path]:
    """code -> the unpacked BEIR folder of its demo archive."""
    from contriever_repro.data.mrtydi import archive_root, unpack_archive

    root = tmp_path_factory.mktemp("mrtydi")
    start = time.perf_counter()
    archives = generate_mrtydi(root / "mrtydi", MRTYDI_SPEC, SEED, None, LANGUAGES)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"generation took {elapsed:.1f} s"
    assert archives == {
        code: root / "mrtydi" / f"mrtydi-v1.1-{name}.tar.gz"
        for code, name in (("fi", "finnish"), ("ru", "russian"), ("ar", "arabic"))
    }
    assert sorted(p.name for p in (root / "mrtydi").iterdir()) == sorted(
        p.name for p in archives.values()
    )
    out = {}
    for code, archive in archives.items():
        out[code] = root / "beir" / code
        counts = unpack_archive(archive, out[code], root=archive_root(code))
        assert counts["docs"] == MRTYDI_SPEC["n_docs"]
        assert {s: c["queries"] for s, c in counts["splits"].items()} == MRTYDI_SPEC["splits"]
    return out


def test_mrtydi_archives_unpack_into_beir_folders(mrtydi):
    from contriever_repro.data.beir import load_beir_folder

    for folder in mrtydi.values():
        assert sorted(p.name for p in (folder / "qrels").iterdir()) == ["test.tsv", "train.tsv"]
        corpus = read_jsonl(folder / "corpus.jsonl")
        assert all(d["title"] == "" for d in corpus)
        assert all(re.fullmatch(r"[1-9][0-9]*#(0|[1-9][0-9]*)", d["_id"]) for d in corpus)
        articles = Counter(d["_id"].split("#")[0] for d in corpus)
        assert max(articles.values()) > 1, "an article's passages share its id"
        queries = {q["_id"]: q["text"] for q in read_jsonl(folder / "queries.jsonl")}
        assert len(queries) == sum(MRTYDI_SPEC["splits"].values())
        ids = {d["_id"] for d in corpus}
        judged = set()
        for split in ("train", "test"):
            qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
            assert len(qrels) == MRTYDI_SPEC["splits"][split]
            assert all(set(rel) <= ids and 1 <= len(rel) <= 2 for rel in qrels.values())
            assert not judged & set(qrels), "splits share no query"
            judged |= set(qrels)
            load_beir_folder(folder, split)  # strict: every id resolves


def test_mrtydi_languages_keep_their_scripts(mrtydi):
    vocab = {}
    for code, folder in mrtydi.items():
        corpus = " ".join(d["text"] for d in read_jsonl(folder / "corpus.jsonl")).lower()
        questions = " ".join(q["text"] for q in read_jsonl(folder / "queries.jsonl")).lower()
        for text in (corpus, questions):  # passages and questions in the same language
            assert re.search(MRTYDI_SCRIPTS[code], text), code
            others = [p for c, p in MRTYDI_SCRIPTS.items() if c != code]
            assert not re.search("|".join(others), text), code
        vocab[code] = set(words(corpus))
    assert not vocab["ru"] & vocab["ar"] and not vocab["ru"] & vocab["fi"]


def test_mrtydi_questions_are_answerable_but_not_lexically_trivial(mrtydi):
    for code, folder in mrtydi.items():
        corpus = {d["_id"]: words(d["text"]) for d in read_jsonl(folder / "corpus.jsonl")}
        queries = {q["_id"]: words(q["text"]) for q in read_jsonl(folder / "queries.jsonl")}
        qrels = read_qrels(folder / "qrels" / "test.tsv")
        rank = bm25_ranker(corpus)
        top1 = sum(rank(queries[q])[0] in rel for q, rel in qrels.items()) / len(qrels)
        assert 0.35 < top1 < 0.95, f"{code}: BM25 top-1 {top1:.2f}"


def test_mrtydi_is_deterministic_and_per_language(tmp_path, mrtydi):
    spec = {**MRTYDI_SPEC, "languages": ["ru"]}
    alone = generate_mrtydi(tmp_path / "alone", spec, SEED, None, LANGUAGES)
    again = generate_mrtydi(tmp_path / "again", MRTYDI_SPEC, SEED, None, LANGUAGES)
    first = mrtydi["ru"].parent.parent / "mrtydi"
    assert files_of(tmp_path / "again") == files_of(first)
    assert alone["ru"].read_bytes() == again["ru"].read_bytes(), "independent of other languages"
    other = generate_mrtydi(tmp_path / "other", spec, SEED + 1, None, LANGUAGES)
    assert other["ru"].read_bytes() != alone["ru"].read_bytes()
    code = (
        "import sys; from contriever_repro.data.demo_world import generate_mrtydi; "
        f"generate_mrtydi(sys.argv[1], {spec!r}, {SEED}, None, {LANGUAGES!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "3"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "hash")], env=env, check=True)
    assert files_of(tmp_path / "hash") == files_of(tmp_path / "alone")


def test_mrtydi_defaults_cover_every_mrtydi_language_of_the_world(tmp_path):
    archives = generate_mrtydi(tmp_path / "m", None, SEED, None, LANGUAGES)
    assert list(archives) == ["en", "fi", "ru", "ar"]
    only_en = generate_mrtydi(tmp_path / "en", {}, SEED, None, ["en", "es"])  # es: not in it
    assert list(only_en) == ["en"]


@pytest.mark.parametrize(
    "spec,languages,message",
    [
        ({"n_doc": 10}, LANGUAGES, "unknown keys"),
        ({"languages": ["es"]}, LANGUAGES, "'es' is not a Mr. TyDi language"),
        ({"languages": ["ja"]}, LANGUAGES, "'ja' is not one of demo_world.languages"),
        ({"languages": ["fi", "fi"]}, LANGUAGES, "listed twice"),
        ({"languages": "fi"}, LANGUAGES, "non-empty list"),
        ({"splits": {"train": 10}}, LANGUAGES, "include test"),
        ({"splits": {"test": 10, "validation": 5}}, LANGUAGES, "must be among"),
        ({"n_docs": 20, "splits": {"test": 200}}, LANGUAGES, "answerable facts"),
        ({"synonym_rate": 2}, LANGUAGES, "synonym_rate"),
        ({}, ["es"], "first of languages"),
        ([], LANGUAGES, "must be a mapping"),
    ],
)
def test_bad_mrtydi_specs_name_the_problem(tmp_path, spec, languages, message):
    with pytest.raises(InputError, match=message):
        generate_mrtydi(tmp_path / "out", spec, SEED, None, languages)
    assert not (tmp_path / "out").exists()
