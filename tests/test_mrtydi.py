"""Mr. TyDi v1.1: topics and qrels of the real release, and archives -> BEIR folders."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from contriever_repro.data.beir import convert_beir_folder, load_beir_folder
from contriever_repro.data.mrtydi import (
    MRTYDI_LANGUAGES,
    archive_name,
    archive_root,
    archive_url,
    queries_per_split,
    read_topics,
    read_trec_qrels,
    unpack_archive,
    write_archive,
)
from contriever_repro.errors import InputError
from contriever_repro.io import read_table

CODES = ["ar", "bn", "en", "fi", "id", "ja", "ko", "ru", "sw", "te", "th"]
# (code, split) -> (topics, qrels rows) of the real files in ../shared/data/mrtydi.
REAL_COUNTS = {
    ("ar", "test"): (1081, 1257),
    ("bn", "test"): (111, 130),
    ("en", "test"): (744, 935),
    ("fi", "test"): (1254, 1451),
    ("id", "test"): (829, 961),
    ("ja", "test"): (720, 923),
    ("ko", "test"): (421, 492),
    ("ru", "test"): (995, 1168),
    ("sw", "train"): (2072, 2401),
    ("sw", "dev"): (526, 623),
    ("sw", "test"): (670, 743),
    ("te", "test"): (646, 677),
    ("th", "test"): (1190, 1368),
}
PASSAGE_ID = re.compile(r"[0-9]+#[0-9]+")


def real_files(shared: Path, code: str, split: str) -> tuple[Path, Path]:
    folder = shared / "mrtydi"
    return (
        folder / f"topics.mrtydi-v1.1-{code}.{split}.txt.gz",
        folder / f"qrels.mrtydi-v1.1-{code}.{split}.txt",
    )


def test_languages_and_archive_names():
    assert list(MRTYDI_LANGUAGES) == CODES
    assert archive_name("sw") == "swahili" and archive_name("ja") == "japanese"
    assert archive_root("en") == "mrtydi-v1.1-english"
    assert archive_url("th") == (
        "https://git.uwaterloo.ca/jimmylin/mr.tydi/-/raw/master/data/mrtydi-v1.1-thai.tar.gz"
    )
    with pytest.raises(InputError, match="ar, bn, en, fi, id, ja, ko, ru, sw, te, th"):
        archive_name("xx")
    with pytest.raises(InputError, match="unknown Mr. TyDi language 'swahili'"):
        archive_root("swahili")


@pytest.mark.parametrize("code,split", sorted(REAL_COUNTS))
def test_real_topics_and_qrels(shared_data, code, split):
    topics_path, qrels_path = real_files(shared_data, code, split)
    topics = read_topics(topics_path)
    qrels = read_trec_qrels(qrels_path)
    assert list(topics.columns) == ["query_id", "text"]
    assert list(qrels.columns) == ["query_id", "doc_id", "relevance"]
    assert (len(topics), len(qrels)) == REAL_COUNTS[(code, split)]
    assert topics["query_id"].is_unique and topics["text"].str.strip().astype(bool).all()
    assert qrels["doc_id"].map(lambda d: bool(PASSAGE_ID.fullmatch(d))).all()
    assert qrels["relevance"].dtype == "int32" and set(qrels["relevance"]) == {1}
    # Every judged query is a topic of the same split, and every topic is judged.
    assert set(qrels["query_id"]) == set(topics["query_id"])
    assert queries_per_split({split: qrels}) == {split: len(topics)}


def test_real_swahili_splits_are_disjoint(shared_data):
    ids = {
        s: set(read_topics(real_files(shared_data, "sw", s)[0])["query_id"])
        for s in ("train", "dev", "test")
    }
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"]
    assert not ids["dev"] & ids["test"]


def test_real_swahili_topics_and_qrels_in_an_archive(shared_data, tmp_path):
    """The real Swahili topics and qrels of all three splits, with made-up passages for
    the judged documents (and some more of their articles), through unpack_archive."""
    topics, qrels, judged = {}, {}, set()
    for split in ("train", "dev", "test"):
        t_path, q_path = real_files(shared_data, "sw", split)
        t, q = read_topics(t_path), read_trec_qrels(q_path)
        topics[split] = list(zip(t["query_id"], t["text"], strict=True))
        qrels[split] = list(zip(q["query_id"], q["doc_id"], q["relevance"], strict=True))
        judged |= set(q["doc_id"])
    last: dict[int, int] = {}  # article -> its last judged passage
    for d in judged:
        a, p = map(int, d.split("#"))
        last[a] = max(last.get(a, 0), p)
    docs = [
        {"id": f"{a}#{p}", "title": f"Makala {a}", "contents": f"kifungu {p} cha makala {a}"}
        for a in sorted(last)
        for p in range(last[a] + 3)
    ]
    assert judged <= {d["id"] for d in docs}
    archive = write_archive(tmp_path / "sw.tar.gz", archive_root("sw"), docs, topics, qrels)
    counts = unpack_archive(archive, tmp_path / "beir", root="mrtydi-v1.1-swahili")
    assert counts["docs"] == len(docs)
    assert counts["queries"] == 2072 + 526 + 670
    assert counts["splits"] == {
        "train": {"queries": 2072, "qrels": 2401},
        "dev": {"queries": 526, "qrels": 623},
        "test": {"queries": 670, "qrels": 743},
    }
    corpus, queries, test = load_beir_folder(tmp_path / "beir", "test")
    assert len(queries) == 670 and len(test) == 743
    assert set(test["doc_id"]) <= set(corpus["doc_id"])


# ----------------------------------------------------------------------------- archives

DOCS = [
    {"id": f"{a}#{p}", "title": f"Article {a}", "contents": f"passage {p} of article {a}"}
    for a in (7, 31, 450)
    for p in range(4)
]
TOPICS = {
    "train": [("1", "which passage is first?"), ("2", "what does article 31 say?")],
    "dev": [("3", "a dev question")],
    "test": [("4", "where is passage two?"), ("5", "ask about article 450")],
}
QRELS = {
    "train": [("1", "7#0", 1), ("2", "31#1", 1), ("2", "31#2", 1)],
    "dev": [("3", "450#3", 1)],
    "test": [("4", "7#2", 1), ("5", "450#0", 1)],
}


def make_archive(tmp_path: Path, docs=DOCS, topics=TOPICS, qrels=QRELS, root=None) -> Path:
    root = root or archive_root("fi")
    return write_archive(tmp_path / f"{root}.tar.gz", root, docs, topics, qrels)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_archive_has_the_release_layout(tmp_path):
    archive = make_archive(tmp_path)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        root = "mrtydi-v1.1-finnish"
        assert {f"{root}/collection/docs.jsonl.gz", f"{root}/topic.tsv", f"{root}/qrels.txt"} | {
            f"{root}/{kind}.{s}.{ext}"
            for s in ("train", "dev", "test")
            for kind, ext in (("topic", "tsv"), ("qrels", "txt"))
        } <= set(names)
        docs = gzip.decompress(tar.extractfile(f"{root}/collection/docs.jsonl.gz").read())
        first = json.loads(docs.decode().splitlines()[0])
        assert first == {"id": "7#0", "title": "Article 7", "contents": "passage 0 of article 7"}
        qrels = tar.extractfile(f"{root}/qrels.test.txt").read().decode()
        assert qrels.splitlines()[0].split() == ["4", "Q0", "7#2", "1"]
    again = write_archive(tmp_path / "again.tar.gz", root, DOCS, TOPICS, QRELS)
    assert again.read_bytes() == archive.read_bytes()


def test_unpack_writes_the_authors_beir_folder(tmp_path):
    archive = make_archive(tmp_path)
    out = tmp_path / "beir"
    counts = unpack_archive(archive, out, root="mrtydi-v1.1-finnish")
    assert counts == {
        "docs": 12,
        "queries": 5,
        "splits": {
            "train": {"queries": 2, "qrels": 3},
            "dev": {"queries": 1, "qrels": 1},
            "test": {"queries": 2, "qrels": 2},
        },
    }
    corpus = read_jsonl(out / "corpus.jsonl")
    assert [d["_id"] for d in corpus] == [d["id"] for d in DOCS]
    assert all(d["title"] == "" for d in corpus), "the authors drop the article title"
    assert corpus[0] == {"_id": "7#0", "title": "", "text": "passage 0 of article 7"}
    queries = read_jsonl(out / "queries.jsonl")
    assert queries == [{"_id": q, "text": t} for rows in TOPICS.values() for q, t in rows]
    assert sorted(p.name for p in (out / "qrels").iterdir()) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert (out / "qrels" / "train.tsv").read_text().splitlines() == [
        "query-id\tcorpus-id\tscore",
        "1\t7#0\t1",
        "2\t31#1\t1",
        "2\t31#2\t1",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary left"

    # The project's BEIR conversion reads it: test split, the queries judged there.
    tables = {k: tmp_path / f"{k}.parquet" for k in ("corpus", "queries", "qrels")}
    rows = convert_beir_folder(out, "test", tables["corpus"], tables["queries"], tables["qrels"])
    assert rows == {"docs": 12, "queries": 2, "qrels": 2}
    assert set(read_table(tables["corpus"], "corpus")["title"]) == {""}
    assert list(read_table(tables["queries"], "queries")["query_id"]) == ["4", "5"]
    qrels = read_table(tables["qrels"], "qrels")
    assert qrels.to_dict("records") == [
        {"query_id": "4", "doc_id": "7#2", "relevance": 1},
        {"query_id": "5", "doc_id": "450#0", "relevance": 1},
    ]


def test_other_fields_are_kept_and_dot_slash_names_read(tmp_path):
    """The authors keep extra passage fields; `tar -C dir -czf x .` names start with ./"""
    root = "mrtydi-v1.1-thai"
    docs = [{"id": "1#0", "title": "T", "contents": "x", "url": "u"}]
    plain = write_archive(
        tmp_path / "a.tar.gz", root, docs, {"test": [("9", "q")]}, {"test": [("9", "1#0", 1)]}
    )
    dotted = tmp_path / "b.tar.gz"
    with tarfile.open(plain) as src, tarfile.open(dotted, "w:gz") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read() if info.isfile() else None
            info.name = f"./{info.name}"
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    unpack_archive(dotted, tmp_path / "out", root=root)
    assert read_jsonl(tmp_path / "out" / "corpus.jsonl") == [
        {"_id": "1#0", "title": "", "text": "x", "url": "u"}
    ]


def test_splits_absent_from_the_archive_are_skipped_unless_required(tmp_path):
    archive = make_archive(tmp_path, topics={"test": TOPICS["test"]}, qrels={"test": QRELS["test"]})
    counts = unpack_archive(archive, tmp_path / "out")
    assert list(counts["splits"]) == ["test"]
    assert [p.name for p in (tmp_path / "out" / "qrels").iterdir()] == ["test.tsv"]
    with pytest.raises(InputError, match=r"no member mrtydi-v1.1-finnish/qrels.train.txt"):
        unpack_archive(archive, tmp_path / "again", required=("test", "train"))
    assert not (tmp_path / "again").exists()


def test_a_new_unpack_replaces_an_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    unpack_archive(make_archive(tmp_path), out)
    assert not (out / "stale.txt").exists() and (out / "corpus.jsonl").exists()


def _with_member(tmp_path: Path, member: str, data: bytes) -> Path:
    """The test archive with one member's bytes replaced."""
    good = make_archive(tmp_path)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for info in src.getmembers():
            if not info.isfile():
                dst.addfile(info)
                continue
            content = src.extractfile(info).read()
            if info.name == f"mrtydi-v1.1-finnish/{member}":
                content = data
            info.size = len(content)
            dst.addfile(info, io.BytesIO(content))
    return bad


def _docs_gz(lines: list[str]) -> bytes:
    return gzip.compress("".join(line + "\n" for line in lines).encode())


def _truncated(tmp_path: Path) -> Path:
    data = make_archive(tmp_path).read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


GOOD_DOC_LINES = [json.dumps(d) for d in DOCS]
BAD_ARCHIVES = [
    (
        lambda p: make_archive(p, qrels={**QRELS, "test": [("4", "7#2", 1), ("5", "450#9", 1)]}),
        r"qrels line 2 of mrtydi-v1.1-finnish/qrels.test.txt: doc '450#9' is not in the "
        r"collection",
    ),
    (
        lambda p: make_archive(p, qrels={**QRELS, "dev": [("77", "7#0", 1)]}),
        r"qrels line 1 of mrtydi-v1.1-finnish/qrels.dev.txt: query '77' is not in the topics",
    ),
    (
        lambda p: _with_member(p, "topic.tsv", b"1\tfine\n2 no tab here\n"),
        r"line 2 of mrtydi-v1.1-finnish/topic.tsv: expected 'qid<TAB>question', found no tab",
    ),
    (
        lambda p: _with_member(p, "topic.tsv", b"1\tone\n\n1\tagain\n"),
        r"line 3 of mrtydi-v1.1-finnish/topic.tsv: duplicate query id '1' \(first on line 1\)",
    ),
    (
        lambda p: _with_member(p, "qrels.test.txt", b"4 Q0 7#2 1\n5 Q0 450#0\n"),
        r"qrels line 2 of mrtydi-v1.1-finnish/qrels.test.txt: expected 4 whitespace",
    ),
    (
        lambda p: _with_member(p, "qrels.test.txt", b"4 Q0 7#2 yes\n"),
        r"qrels line 1 of .*qrels.test.txt: relevance must be an integer, got 'yes'",
    ),
    (
        lambda p: _with_member(
            p, "collection/docs.jsonl.gz", _docs_gz([*GOOD_DOC_LINES[:3], '{"id": "x#1",'])
        ),
        r"line 4 of mrtydi-v1.1-finnish/collection/docs.jsonl.gz: malformed JSON",
    ),
    (
        lambda p: _with_member(
            p, "collection/docs.jsonl.gz", _docs_gz([*GOOD_DOC_LINES, '{"id": "9#9"}'])
        ),
        r"line 13 of .*docs.jsonl.gz: passage '9#9': 'contents' must be a string",
    ),
    (
        lambda p: _with_member(
            p, "collection/docs.jsonl.gz", _docs_gz([*GOOD_DOC_LINES[:5], "", GOOD_DOC_LINES[2]])
        ),
        r"line 7 of .*docs.jsonl.gz: duplicate doc id '7#2' \(first on line 3\)",
    ),
    (
        lambda p: _with_member(
            p,
            "collection/docs.jsonl.gz",
            gzip.compress(b"\n".join(x.encode() for x in GOOD_DOC_LINES))[:-30],
        ),
        r"docs.jsonl.gz: cannot read past line \d+: truncated or corrupt",
    ),
    (_truncated, r"truncated or corrupt"),
    (
        lambda p: make_archive(p, root="mrtydi-v1.1-english"),
        r"top folder is 'mrtydi-v1.1-english', expected 'mrtydi-v1.1-finnish'",
    ),
]


@pytest.mark.parametrize("make,message", BAD_ARCHIVES)
def test_bad_archives_name_member_and_line_and_leave_nothing(tmp_path, make, message):
    archive = make(tmp_path)
    out = tmp_path / "out" / "beir"
    with pytest.raises(InputError, match=message):
        unpack_archive(archive, out, root="mrtydi-v1.1-finnish")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_missing_members_are_named(tmp_path):
    root = "mrtydi-v1.1-finnish"
    path = tmp_path / "no-topics.tar.gz"
    good = make_archive(tmp_path)
    with tarfile.open(good) as src, tarfile.open(path, "w:gz") as dst:
        for info in src.getmembers():
            if info.name != f"{root}/topic.tsv":
                dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    with pytest.raises(InputError, match=rf"no member {root}/topic.tsv \(members: collection/"):
        unpack_archive(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="archive does not exist"):
        unpack_archive(tmp_path / "absent.tar.gz", tmp_path / "out")
    with pytest.raises(InputError, match="unknown Mr. TyDi split"):
        unpack_archive(good, tmp_path / "out", splits=("validation",))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"1\tok\n2\n", r"topics.tsv:2: expected 'qid<TAB>question'"),
        (b"1\tok\n\t empty id\n", r"topics.tsv:2: empty query id"),
        (b"1\tok\n\n1\tagain\n", r"topics.tsv:3: duplicate query id '1' \(first on line 1\)"),
        (b"1\t \n", r"topics.tsv:1: query '1' has an empty question"),
        (b"\n\n", r"topics.tsv: no topics"),
        (b"1\t\xff\n", r"topics.tsv:1: not valid UTF-8"),
    ],
)
def test_bad_topic_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "topics.tsv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_topics(path)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"1 Q0 5#1 1\n2 Q0 5#2\n", r"qrels.txt:2: expected 4 whitespace-separated fields"),
        (b"1 Q0 5#1 1.0\n", r"qrels.txt:1: relevance must be an integer, got '1.0'"),
        (b"", r"qrels.txt: no qrels"),
    ],
)
def test_bad_trec_qrels_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "qrels.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_trec_qrels(path)


def test_topics_read_gzip_and_bom(tmp_path):
    path = tmp_path / "t.txt.gz"
    path.write_bytes(gzip.compress("\ufeff12\tKwa nini?\r\n13\tNani\tna tab\n".encode()))
    topics = read_topics(path)
    assert topics.to_dict("records") == [
        {"query_id": "12", "text": "Kwa nini?"},
        {"query_id": "13", "text": "Nani\tna tab"},
    ]
    qrels = tmp_path / "q.txt"
    qrels.write_text("12\tQ0\t3#0\t1\n13 0 3#1 0\n")
    assert read_trec_qrels(qrels).equals(
        pd.DataFrame(
            {
                "query_id": ["12", "13"],
                "doc_id": ["3#0", "3#1"],
                "relevance": pd.Series([1, 0], dtype="int32"),
            },
        ).astype({"query_id": object, "doc_id": object})
    )


def test_script_checks_the_language_against_the_top_folder(tmp_path, repo_root):
    archive = make_archive(tmp_path)
    script = repo_root / "scripts" / "unpack_mrtydi.py"
    env = {**os.environ, "PYTHONPATH": str(repo_root / "lib")}

    def run(language: str, out: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(script), "--archive", str(archive), "--language", language]
        return subprocess.run(
            [*cmd, "--out", str(out)], capture_output=True, text=True, env=env, check=False
        )

    wrong = run("sw", tmp_path / "sw")
    assert wrong.returncode == 2 and "expected 'mrtydi-v1.1-swahili'" in wrong.stderr
    assert not (tmp_path / "sw").exists()
    unknown = run("xx", tmp_path / "xx")
    assert unknown.returncode == 2 and "unknown Mr. TyDi language 'xx'" in unknown.stderr
    ok = run("fi", tmp_path / "fi")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "fi" / "qrels" / "test.tsv").is_file()
