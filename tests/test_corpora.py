"""Raw corpora to one document per line: hand-made dumps and CC-100 files with known answers."""

from __future__ import annotations

import bz2
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

import contriever_repro
from contriever_repro.data import corpora
from contriever_repro.data.corpora import (
    cc100_to_lines,
    clean_wikitext,
    read_multistream_index,
    text_to_lines,
    wikipedia_to_lines,
)
from contriever_repro.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

HEADER = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.10" xml:lang="en">\n'
    "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
    '    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
    '      <namespace key="4" case="first-letter">Wikipedia</namespace>\n'
    "    </namespaces>\n  </siteinfo>\n"
)
FOOTER = "</mediawiki>\n"

ALPHA = """{{Short description|Town in France}}
{{Infobox settlement
| name = Alpha
| population = {{formatnum:1000}}
}}
'''Alpha''' is a town near [[Paris|the capital]] of [[France]].<ref name="a">{{cite web
|url=http://example.org|title=Source}} Ref text.</ref> It lies 3&nbsp;km from a river.<ref
name="b" />
[[File:x.jpg|thumb|A caption with [[Link]]]]
<!-- hidden comment -->
== History ==
The town grew around a ''mill'' in 1850, see [http://example.org the archive].
{| class="wikitable"
! Year !! People
|-
| 1900 || 120
|}
* It has a school.

== References ==
{{Reflist}}
* Author, ''Some book''.
== External links ==
* [http://example.org Official site]
[[Category:Towns]]
"""
ALPHA_LINE = (
    "Alpha is a town near the capital of France. It lies 3 km from a river. "
    "The town grew around a mill in 1850, see the archive. It has a school."
)
GAMMA = """'''Gamma: The Sequel''' is a [[film]] with
many lines,\tspaces   and [[Image:poster.png|left]] a category.
[[Category:Films|Gamma]]

=== Plot ===
The hero wins.
==See also==
* [[Delta]]
"""
GAMMA_LINE = "Gamma: The Sequel is a film with many lines, spaces and a category. The hero wins."


def _page(title: str, page_id: int, text: str, ns: int = 0, redirect: str | None = None) -> str:
    red = f"    <redirect title={quoteattr(redirect)} />\n" if redirect else ""
    return (
        f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n"
        f"    <id>{page_id}</id>\n{red}    <revision>\n      <id>{page_id * 10}</id>\n"
        f'      <text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text>\n'
        "    </revision>\n  </page>\n"
    )


PAGES = [
    ("Alpha", 1, ALPHA, 0, None),
    ("Alpha (town)", 2, "#REDIRECT [[Alpha]]", 0, "Alpha"),
    ("Wikipedia:About", 3, "This page is about the project and is long enough. " * 5, 4, None),
    ("Beta", 4, "'''Beta''' is short.", 0, None),
    ("Gamma: The Sequel", 5, GAMMA, 0, None),
    ("Alpha town", 6, "#redirect [[Alpha]] {{R from move}}", 0, None),
]


def write_multistream(dir_: Path, pages: list[tuple], per_stream: int = 2) -> tuple[Path, Path]:
    """A dump as concatenated bz2 streams (header, pages in twos, footer) and its index."""
    dump, index = dir_ / "wiki-pages-articles-multistream.xml.bz2", dir_ / "wiki-index.txt.bz2"
    data = bz2.compress(HEADER.encode())
    index_lines = []
    for i in range(0, len(pages), per_stream):
        group = pages[i : i + per_stream]
        for title, page_id, *_ in group:
            index_lines.append(f"{len(data)}:{page_id}:{title}\n")
        data += bz2.compress("".join(_page(*p) for p in group).encode())
    data += bz2.compress(FOOTER.encode())
    dump.write_bytes(data)
    index.write_bytes(bz2.compress("".join(index_lines).encode()))
    return dump, index


@pytest.fixture
def dump(tmp_path):
    return write_multistream(tmp_path, PAGES)


def _lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\n") and b"\r" not in data
    return data.decode("utf-8").split("\n")[:-1]


def _leftovers(dir_: Path) -> list[str]:
    return sorted(p.name for p in dir_.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- wikipedia


def test_clean_wikitext_prunes_markup_and_trailing_sections():
    assert clean_wikitext(ALPHA) == ALPHA_LINE
    assert clean_wikitext(GAMMA) == GAMMA_LINE
    assert clean_wikitext("a __NOTOC__ b <references /> c<br/>d") == "a b c d"


EXPECTED_STATS = {"pages": 6, "articles": 2, "redirects": 2, "short": 1, "other_namespace": 1}


def test_wikipedia_with_index_exact_output(dump, tmp_path):
    path, index = dump
    out = tmp_path / "wiki.txt"
    msgs: list[str] = []
    stats = wikipedia_to_lines(path, out, index=index, min_chars=60, log=msgs.append)
    assert _lines(out) == [ALPHA_LINE, GAMMA_LINE]
    assert stats == EXPECTED_STATS
    assert any("articles 2" in m for m in msgs)


def test_wikipedia_min_chars_counts_short(dump, tmp_path):
    path, index = dump
    out = tmp_path / "wiki.txt"
    stats = wikipedia_to_lines(path, out, index=index, min_chars=len(GAMMA_LINE) + 1)
    assert _lines(out) == [ALPHA_LINE]
    assert stats == {**EXPECTED_STATS, "articles": 1, "short": 2}


def test_wikipedia_all_paths_identical(dump, tmp_path, monkeypatch):
    path, index = dump
    monkeypatch.setattr(corpora, "_STREAMS_PER_TASK", 1)
    monkeypatch.setattr(corpora, "_PAGES_PER_TASK", 1)
    outputs = {}
    for name, kwargs in {
        "index1": {"index": index, "processes": 1},
        "index2": {"index": index, "processes": 2},
        "seq1": {"processes": 1},
        "seq2": {"processes": 2},
    }.items():
        out = tmp_path / f"{name}.txt"
        assert wikipedia_to_lines(path, out, min_chars=60, **kwargs) == EXPECTED_STATS
        outputs[name] = out.read_bytes()
    assert len(set(outputs.values())) == 1
    assert outputs["seq1"].decode().split("\n")[:-1] == [ALPHA_LINE, GAMMA_LINE]


def test_wikipedia_order_kept_with_many_workers(tmp_path, monkeypatch):
    pages = [
        (f"Page {i}", i + 1, f"Article number {i} " + "word " * 20, 0, None) for i in range(40)
    ]
    path, index = write_multistream(tmp_path, pages, per_stream=3)
    monkeypatch.setattr(corpora, "_STREAMS_PER_TASK", 1)
    monkeypatch.setattr(corpora, "_PAGES_PER_TASK", 2)
    expected = [f"Article number {i} " + " ".join(["word"] * 20) for i in range(40)]
    for kwargs in ({"index": index, "processes": 3}, {"processes": 3}):
        out = tmp_path / "many.txt"
        stats = wikipedia_to_lines(path, out, min_chars=10, **kwargs)
        assert _lines(out) == expected
        assert stats["pages"] == stats["articles"] == 40


def test_uncompressed_xml_dump_is_read_sequentially(tmp_path):
    xml = tmp_path / "dump.xml"
    xml.write_text(HEADER + "".join(_page(*p) for p in PAGES) + FOOTER, encoding="utf-8")
    out = tmp_path / "wiki.txt"
    assert wikipedia_to_lines(xml, out, min_chars=60) == EXPECTED_STATS
    assert _lines(out) == [ALPHA_LINE, GAMMA_LINE]


def test_read_multistream_index(dump):
    path, index = dump
    offsets, n_pages = read_multistream_index(index, path.stat().st_size)
    assert n_pages == 6 and len(offsets) == 3
    assert offsets[0] == len(bz2.compress(HEADER.encode()))
    assert offsets == sorted(set(offsets))


def test_bad_index_line_names_file_and_line(dump, tmp_path):
    path, _ = dump
    bad = tmp_path / "bad-index.txt"
    bad.write_text("100:1:Alpha\nnot an index line\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad-index\.txt:2: "):
        wikipedia_to_lines(path, tmp_path / "o.txt", index=bad)
    assert not (tmp_path / "o.txt").exists()


def test_wikipedia_without_articles_is_an_error(tmp_path):
    path, index = write_multistream(tmp_path, [PAGES[1], PAGES[2]])
    out = tmp_path / "wiki.txt"
    for kwargs in ({"index": index}, {}):
        with pytest.raises(InputError, match="produced no documents") as err:
            wikipedia_to_lines(path, out, **kwargs)
        assert path.name in str(err.value)
        assert not out.exists() and _leftovers(tmp_path) == []


def test_corrupt_bz2_names_the_file(dump, tmp_path):
    path, index = dump
    garbage = tmp_path / "garbage-multistream.xml.bz2"
    garbage.write_bytes(b"this is not bzip2 data at all" * 10)
    out = tmp_path / "wiki.txt"
    with pytest.raises(InputError, match="garbage-multistream.xml.bz2"):
        wikipedia_to_lines(garbage, out)
    # A damaged page stream found through the index.
    data = bytearray(path.read_bytes())
    offsets, _ = read_multistream_index(index)
    data[offsets[1] + 20 : offsets[1] + 40] = b"\x00" * 20
    broken = tmp_path / "broken.xml.bz2"
    broken.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"broken\.xml\.bz2: .*offset {offsets[1]}"):
        wikipedia_to_lines(broken, out, index=index, processes=2)
    # Truncated: the sequential reader hits the end of the file mid-stream.
    truncated = tmp_path / "truncated.xml.bz2"
    truncated.write_bytes(path.read_bytes()[: offsets[2] - 10])
    with pytest.raises(InputError, match="truncated.xml.bz2"):
        wikipedia_to_lines(truncated, out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_malformed_xml_names_the_file(tmp_path):
    bad = tmp_path / "bad.xml.bz2"
    bad.write_bytes(bz2.compress((HEADER + "<page><title>x</title>\n<ns>0</page>").encode()))
    with pytest.raises(InputError, match=r"bad\.xml\.bz2:\d+: malformed XML"):
        wikipedia_to_lines(bad, tmp_path / "o.txt")
    with pytest.raises(InputError, match="does not exist"):
        wikipedia_to_lines(tmp_path / "missing.xml.bz2", tmp_path / "o.txt")


# --------------------------------------------------------------------------- cc100

CC100 = (
    b"\r\n"
    b"First doc para one.\r\n"
    b"  Para   two\tof first.\r\n"
    b"\r\n"
    b"\r\n"
    b"Second doc only para.\r\n"
    b"\n"
    b"Third \xc3\xa9t\xc3\xa9 doc.\r\n"
    b"\r\n"
    b"\r\n"
)
CC100_DOCS = ["First doc para one. Para two of first.", "Second doc only para.", "Third été doc."]
CC100_PARAS = [
    "First doc para one.",
    "Para two of first.",
    "Second doc only para.",
    "Third été doc.",
]


@pytest.fixture
def cc100_xz(tmp_path):
    path = tmp_path / "en.txt.xz"
    path.write_bytes(lzma.compress(CC100))
    return path


def test_cc100_documents(cc100_xz, tmp_path):
    out = tmp_path / "docs.txt"
    stats = cc100_to_lines(cc100_xz, out)
    assert _lines(out) == CC100_DOCS
    assert stats == {"documents": 3, "paragraphs": 4, "lines_written": 3, "short": 0}


def test_cc100_paragraphs(cc100_xz, tmp_path):
    out = tmp_path / "paras.txt"
    stats = cc100_to_lines(cc100_xz, out, unit="paragraph")
    assert _lines(out) == CC100_PARAS
    assert stats == {"documents": 3, "paragraphs": 4, "lines_written": 4, "short": 0}


def test_cc100_min_chars_and_plain_text_input(tmp_path):
    plain = tmp_path / "en.txt"
    plain.write_bytes(CC100)
    out = tmp_path / "docs.txt"
    stats = cc100_to_lines(plain, out, min_chars=len("Third été doc.") + 1)
    assert _lines(out) == CC100_DOCS[:2]
    assert stats == {"documents": 3, "paragraphs": 4, "lines_written": 2, "short": 1}
    with pytest.raises(ValueError, match="unit"):
        cc100_to_lines(plain, out, unit="sentence")


def test_cc100_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt.xz"
    path.write_bytes(lzma.compress(b"ok line\n\nsecond doc\nbad \xff byte\nmore\n"))
    out = tmp_path / "out.txt"
    with pytest.raises(InputError, match=r"bad\.txt\.xz:4: not valid UTF-8") as err:
        cc100_to_lines(path, out)
    assert err.value.line == 4 and err.value.path == str(path)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cc100_corrupt_and_truncated_xz(cc100_xz, tmp_path):
    out = tmp_path / "out.txt"
    corrupt = tmp_path / "corrupt.txt.xz"
    corrupt.write_bytes(b"definitely not xz" * 20)
    with pytest.raises(InputError, match=r"corrupt\.txt\.xz: cannot decompress"):
        cc100_to_lines(corrupt, out)
    truncated = tmp_path / "truncated.txt.xz"
    truncated.write_bytes(cc100_xz.read_bytes()[:-30])
    with pytest.raises(InputError, match=r"truncated\.txt\.xz: cannot decompress"):
        cc100_to_lines(truncated, out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cc100_empty_input(tmp_path):
    path = tmp_path / "empty.txt.xz"
    path.write_bytes(lzma.compress(b"\n\r\n  \n"))
    out = tmp_path / "out.txt"
    with pytest.raises(InputError, match=r"empty\.txt\.xz: produced no documents"):
        cc100_to_lines(path, out)
    with pytest.raises(InputError, match="does not exist"):
        cc100_to_lines(tmp_path / "missing.txt.xz", out)
    assert not out.exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- text


def test_text_to_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(
        "\ufeffdoc one\r\n\n  doc\ttwo  has\u2028spaces \nx\n\u00a0\ndoc four\n".encode()
    )
    out = tmp_path / "out.txt"
    stats = text_to_lines(path, out, min_chars=2)
    assert _lines(out) == ["doc one", "doc two has spaces", "doc four"]
    assert stats == {"documents": 4, "empty": 2, "lines_written": 3, "short": 1}


def test_text_to_lines_errors(tmp_path):
    out = tmp_path / "out.txt"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\n\xe9t\xe9 latin-1\n")
    with pytest.raises(InputError, match=r"bad\.txt:3: not valid UTF-8"):
        text_to_lines(bad, out)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.txt: produced no documents"):
        text_to_lines(empty, out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failure_keeps_previous_output(tmp_path):
    """A failed rerun must not clobber or truncate an existing good output."""
    out = tmp_path / "out.txt"
    out.write_text("previous\n", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\n")
    with pytest.raises(InputError):
        text_to_lines(bad, out)
    assert out.read_text(encoding="utf-8") == "previous\n"


# --------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    lib = os.path.dirname(os.path.dirname(contriever_repro.__file__))
    env = dict(os.environ, PYTHONPATH=lib)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prepare_corpus.py"), *args],
        capture_output=True,
        text=True,
        env=env,
    )


def test_cli_cc100_writes_stats(cc100_xz, tmp_path):
    out, stats = tmp_path / "cc.txt", tmp_path / "cc.json"
    run = _cli("--kind", "cc100", "--input", str(cc100_xz), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert _lines(out) == CC100_DOCS
    run = _cli(
        "--kind", "cc100", "--input", str(cc100_xz), "--out", str(out),
        "--unit", "paragraph", "--stats", str(stats),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert _lines(out) == CC100_PARAS
    record = json.loads(stats.read_text(encoding="utf-8"))
    assert record["documents"] == 3 and record["lines_written"] == 4 and record["short"] == 0
    assert record["kind"] == "cc100"


def test_cli_bad_input_exits_2(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    out = tmp_path / "out.txt"
    run = _cli("--kind", "text", "--input", str(bad), "--out", str(out))
    assert run.returncode == 2
    assert "bad.txt:2: not valid UTF-8" in run.stderr
    assert not out.exists()
