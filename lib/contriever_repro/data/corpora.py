"""Raw pre-training corpora to "one document per line" UTF-8 text files.

Contriever pre-trains on English Wikipedia and CC-100 text; the tokeniser step
(`training.shards.tokenize_text_file`) expects one document per line. This module makes
those files from the raw downloads:

* `wikipedia_to_lines`: a `*-pages-articles-multistream.xml.bz2` dump, one article per
  line. The wikitext is converted with mwparserfromhell rather than wikiextractor, the
  usual tool: wikiextractor 3.0.6 (its last release) fails to import on Python >= 3.11
  because its regexes put global inline flags (`(?i)`) mid-pattern, which `re` rejects
  since 3.11; mwparserfromhell is maintained and has a C tokenizer. The parse tree is
  pruned (templates, tables, references, file/category links, headings and the trailing
  "See also"/"References"/... sections) before `strip_code`. The authors used a July
  2019 dump, which Wikimedia no longer serves, so the dump date is configuration and
  the article count will differ from theirs.
* `cc100_to_lines`: CC-100 `{lang}.txt.xz` files (CCNet output: one paragraph per line,
  documents separated by an empty line), per document or per paragraph.
* `text_to_lines`: a corpus already one document per line (a local mirror, the demo
  world): validated and normalised the same way.

Every output is written atomically (no partial file after a crash), whitespace inside a
document is collapsed to single spaces so a document is exactly one line, input must be
strict UTF-8 (an error names the file and line), and an input that yields no document
is an error rather than an empty file.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import itertools
import logging
import lzma
import multiprocessing
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ..errors import InputError
from ..io import atomic_dir, atomic_path
from ..progress import fmt_seconds

_logger = logging.getLogger(__name__)

Log = Callable[[str], None]

# Level-2 sections after which an article holds only links and citations.
STOP_SECTIONS = frozenset(
    {
        "see also",
        "references",
        "external links",
        "further reading",
        "notes",
        "notes and references",
        "footnotes",
        "citations",
        "sources",
        "works cited",
    }
)
# Tags whose content is not running prose (mwparserfromhell already hides gallery, math,
# timeline, ...; `strip_code` keeps the text of <ref> and of tables, so they go here).
_DROP_TAGS = frozenset(
    {
        "ref",
        "references",
        "table",
        "syntaxhighlight",
        "source",
        "chem",
        "ce",
        "hiero",
        "mapframe",
        "maplink",
        "templatestyles",
        "gallery",
        "math",
        "timeline",
        "imagemap",
        "score",
        "graph",
    }
)
_DROP_LINK_PREFIXES = ("file:", "image:", "category:")
_BEHAVIOR_SWITCH = re.compile(r"__[A-Z]+__")
# mwparserfromhell leaves a tag as text when its attributes span lines (`<ref\nname=x/>`),
# which MediaWiki accepts, so references are also removed by regex before parsing;
# self-closing ones first, so a paired match can never start at one.
_REF_SELF_CLOSING = re.compile(r"<ref(?:\s[^>]*)?/>", re.IGNORECASE)
_REF_PAIRED = re.compile(r"<ref(?:\s[^>]*)?>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
_STREAMS_PER_TASK = 10  # multistream dumps hold 100 pages per bz2 stream
_PAGES_PER_TASK = 500  # sequential path: pages handed to a worker at once
_LOG_EVERY_S = 10.0


def _collapse(text: str) -> str:
    """All whitespace runs (newlines, tabs, NBSP, U+2028, ...) become one space."""
    return " ".join(text.split())


def _default_log(log: Log | None) -> Log:
    return log if log is not None else _logger.info


class _Ticker:
    """Rate-limited progress lines through a plain callable (the scripts pass log.info)."""

    def __init__(self, log: Log, what: str, unit: str, total: int | None = None):
        self.log, self.what, self.unit, self.total = log, what, unit, total
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, written: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < _LOG_EVERY_S:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        line = (
            f"{self.what}: {done} {self.unit} ({rate:.0f}/s), {written} lines written, "
            f"elapsed {fmt_seconds(elapsed)}"
        )
        if self.total and rate > 0:
            line += (
                f", {100.0 * done / self.total:.1f}% ETA {fmt_seconds((self.total - done) / rate)}"
            )
        self.log(line)


# --------------------------------------------------------------------------- wikitext


def clean_wikitext(wikitext: str) -> str:
    """Article wikitext to one line of prose (empty when nothing readable is left).

    Why prune the tree instead of regex-deleting markup: <ref> and [[File:...]] nest
    templates and links, which regexes cannot match reliably.
    """
    import mwparserfromhell

    wikitext = _REF_PAIRED.sub("", _REF_SELF_CLOSING.sub("", wikitext))
    code = mwparserfromhell.parse(wikitext)
    _prune(code, top=True)
    text = code.strip_code(normalize=True, collapse=True)
    return _collapse(_BEHAVIOR_SWITCH.sub(" ", text))


def _prune(code, top: bool = False) -> None:
    """Drop non-prose nodes in place, one linear pass per node list."""
    from mwparserfromhell.nodes import (
        Comment,
        ExternalLink,
        Heading,
        Tag,
        Template,
        Text,
        Wikilink,
    )

    kept = []
    for node in code.nodes:
        if isinstance(node, Heading):
            if top and node.level <= 2:
                title = node.title.strip_code().strip().lower()
                if title in STOP_SECTIONS:
                    break
            continue
        if isinstance(node, (Template, Comment)):
            continue
        if isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in _DROP_TAGS:
                continue
            if tag == "br":  # a line break separates words; strip_code would glue them
                kept.append(Text(" "))
                continue
            if node.contents is not None:
                _prune(node.contents)
        elif isinstance(node, Wikilink):
            if str(node.title).strip().lower().startswith(_DROP_LINK_PREFIXES):
                continue
            if node.text is not None:
                _prune(node.text)
        elif isinstance(node, ExternalLink) and node.title is not None:
            _prune(node.title)
        kept.append(node)
    code.nodes[:] = kept


# --------------------------------------------------------------------------- wikipedia


class _Page(NamedTuple):
    ns: str
    redirect: bool
    text: str


def _local(tag: str) -> str:
    """Tag name without its `{namespace}` (the export schema version changes per dump)."""
    return tag.rsplit("}", 1)[-1]


def _page_from_element(elem: ET.Element) -> _Page:
    ns, redirect, text = "", False, ""
    for child in elem:
        name = _local(child.tag)
        if name == "ns":
            ns = (child.text or "").strip()
        elif name == "redirect":
            redirect = True
        elif name == "revision":
            for sub in child:
                if _local(sub.tag) == "text":
                    text = sub.text or ""
    return _Page(ns, redirect, text)


def _convert_pages(pages: Iterable[_Page], min_chars: int) -> tuple[list[str], Counter]:
    """The per-page decisions, identical in every code path so outputs match."""
    lines: list[str] = []
    counts: Counter = Counter()
    for page in pages:
        counts["pages"] += 1
        if page.ns != "0":
            counts["other_namespace"] += 1
        elif page.redirect or page.text.lstrip()[:9].lower() == "#redirect":
            counts["redirects"] += 1
        else:
            text = clean_wikitext(page.text)
            if len(text) < min_chars:
                counts["short"] += 1
            else:
                lines.append(text)
                counts["articles"] += 1
    return lines, counts


def _pages_task(args: tuple[list[_Page], int]) -> tuple[list[str], Counter]:
    pages, min_chars = args
    return _convert_pages(pages, min_chars)


def _streams_task(args: tuple[str, list[tuple[int, int]], int]) -> tuple[list[str], Counter]:
    """Decompress and convert a run of independent bz2 streams (runs in a worker)."""
    dump, ranges, min_chars = args
    pages: list[_Page] = []
    with open(dump, "rb") as f:
        for start, end in ranges:
            f.seek(start)
            data = f.read(end - start)
            try:
                xml = bz2.decompress(data)
            except (OSError, EOFError, ValueError) as err:
                raise InputError(
                    f"corrupt bz2 stream at byte offset {start} ({err})", dump
                ) from None
            pages.extend(_pages_from_fragment(xml, dump, start))
    return _convert_pages(pages, min_chars)


def _pages_from_fragment(xml: bytes, dump: str, offset: int) -> list[_Page]:
    """Parse the <page> elements of one stream (no root element: wrap in a dummy one)."""
    xml = xml.strip()
    if xml.startswith(b"<mediawiki"):  # header stream (should not be indexed, but be safe)
        end = xml.find(b"</siteinfo>")
        xml = xml[end + len(b"</siteinfo>") :] if end >= 0 else b""
    if xml.endswith(b"</mediawiki>"):  # the final stream closes the root
        xml = xml[: -len(b"</mediawiki>")]
    try:
        root = ET.fromstring(b"<pages>" + xml + b"</pages>")
    except ET.ParseError as err:
        raise InputError(
            f"malformed XML in the bz2 stream at byte offset {offset}: {err}", dump
        ) from None
    return [_page_from_element(e) for e in root if _local(e.tag) == "page"]


def read_multistream_index(
    index: str | Path, dump_size: int | None = None
) -> tuple[list[int], int]:
    """Stream start offsets (in dump order) and the number of pages listed.

    Lines are `offset:page_id:title` (titles may contain colons); consecutive lines
    share an offset, one per bz2 stream of (usually) 100 pages.
    """
    index = Path(index)
    if not index.exists():
        raise InputError("multistream index does not exist", index)
    offsets: list[int] = []
    n_pages = 0
    opener = bz2.open if index.suffix == ".bz2" else open
    try:
        with opener(index, "rt", encoding="utf-8", errors="strict") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                head = line.split(":", 2)
                if len(head) < 3 or not head[0].isdigit():
                    raise InputError("not an `offset:page_id:title` line", index, lineno)
                offset = int(head[0])
                n_pages += 1
                if offsets and offset == offsets[-1]:
                    continue
                if (offsets and offset < offsets[-1]) or (
                    dump_size is not None and offset >= dump_size
                ):
                    raise InputError(
                        f"stream offset {offset} out of order or beyond the dump", index, lineno
                    )
                offsets.append(offset)
    except UnicodeDecodeError as err:
        raise InputError(f"not valid UTF-8 ({err.reason})", index) from None
    except (OSError, EOFError, ValueError) as err:
        raise InputError(f"cannot read the index ({err})", index) from None
    if not offsets:
        raise InputError("multistream index lists no pages", index)
    return offsets, n_pages


def _iter_dump_pages(dump: Path) -> Iterator[_Page]:
    """Stream pages from the whole dump with flat memory (elements cleared as they end)."""
    opener = bz2.open if dump.suffix == ".bz2" else open
    try:
        with opener(dump, "rb") as f:
            context = ET.iterparse(f, events=("start", "end"))
            root = None
            for event, elem in context:
                if root is None:
                    root = elem
                if event == "end" and _local(elem.tag) == "page":
                    yield _page_from_element(elem)
                    root.clear()
    except ET.ParseError as err:
        line = err.position[0] if getattr(err, "position", None) else None
        raise InputError(f"malformed XML ({err})", dump, line) from None
    except (OSError, EOFError, ValueError) as err:
        raise InputError(f"cannot decompress or read the dump ({err})", dump) from None


def _ordered_map(pool, func: Callable, tasks: Iterable, window: int) -> Iterator:
    """`pool.imap` with back-pressure: at most `window` tasks in flight, results in order.

    `Pool.imap` drains its task iterator eagerly in a background thread; on the
    sequential path the tasks hold page text, so that would pull the whole dump
    (~90 GB of XML for enwiki) into memory whenever the workers fall behind.
    """
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(func, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def wikipedia_to_lines(
    dump: str | Path,
    out: str | Path,
    index: str | Path | None = None,
    processes: int = 1,
    min_chars: int = 200,
    log: Log | None = None,
) -> dict:
    """Write one cleaned article per line, in dump order whatever `processes` is.

    With the multistream `index`, workers decompress and parse disjoint runs of bz2
    streams (the dump's design for random access); without it, the dump is read
    sequentially and only the wikitext conversion, the slow part, is spread over workers.
    Returns counts: pages, articles (lines written), redirects, short, other_namespace.
    """
    log = _default_log(log)
    dump = Path(dump)
    if not dump.exists():
        raise InputError("Wikipedia dump does not exist", dump)
    processes = max(1, int(processes))
    total = None
    if index is not None:
        size = dump.stat().st_size
        offsets, total = read_multistream_index(index, size)
        ranges = list(zip(offsets, [*offsets[1:], size], strict=True))
        tasks: Iterable = (
            (str(dump), batch, min_chars) for batch in _chunks(ranges, _STREAMS_PER_TASK)
        )
        func: Callable = _streams_task
        log(f"{dump.name}: {len(offsets)} bz2 streams, {total} pages, {processes} processes")
    else:
        tasks = ((batch, min_chars) for batch in _chunks(_iter_dump_pages(dump), _PAGES_PER_TASK))
        func = _pages_task
        log(f"{dump.name}: no index, reading sequentially, {processes} processes")

    stats: Counter = Counter(pages=0, articles=0, redirects=0, short=0, other_namespace=0)
    tick = _Ticker(log, dump.name, "pages", total)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        pool = multiprocessing.Pool(processes) if processes > 1 else None
        try:
            results = _ordered_map(pool, func, tasks, 4 * processes) if pool else map(func, tasks)
            for lines, counts in results:
                for line in lines:
                    f.write(line + "\n")
                stats.update(counts)
                tick(stats["pages"], stats["articles"])
        finally:
            if pool:
                pool.terminate()
                pool.join()
        if stats["articles"] == 0:
            raise InputError(f"produced no documents ({_fmt(stats)})", dump)
    tick(stats["pages"], stats["articles"], force=True)
    log(f"{dump.name}: {_fmt(stats)}")
    return dict(stats)


def _fmt(stats: Counter | dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in stats.items())


# --------------------------------------------------------------------------- plain text


def _open_binary(path: Path) -> BinaryIO:
    """Open a possibly compressed file for reading bytes, by suffix."""
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without line ending), strict UTF-8.

    Splits on b"\\n" only: text-mode reading would also split on U+2028, U+0085, ...
    inside a paragraph. Those become spaces when whitespace is collapsed.
    """
    if not path.exists():
        raise InputError("file does not exist", path)
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):  # noqa: B007 - lineno used after the loop
                try:
                    line = raw.decode("utf-8", errors="strict")
                except UnicodeDecodeError as err:
                    raise InputError(
                        f"not valid UTF-8 ({err.reason} at byte {err.start} of the line)",
                        path,
                        lineno,
                    ) from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\n").replace("\r", "")
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise InputError(f"cannot decompress or read after line {lineno} ({err})", path) from None


def cc100_to_lines(
    path: str | Path,
    out: str | Path,
    unit: str = "document",
    min_chars: int = 0,
    log: Log | None = None,
) -> dict:
    """CC-100 (paragraph per line, blank line between documents) to one unit per line.

    `unit="document"` joins a document's paragraphs with a space; `unit="paragraph"`
    writes each paragraph as its own line. Units shorter than `min_chars` are dropped.
    Returns counts: documents, paragraphs, lines_written, short.
    """
    if unit not in ("document", "paragraph"):
        raise ValueError(f"unit must be 'document' or 'paragraph', not {unit!r}")
    log = _default_log(log)
    path = Path(path)
    stats = Counter(documents=0, paragraphs=0, lines_written=0, short=0)
    tick = _Ticker(log, path.name, "documents")

    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:

        def emit(text: str) -> None:
            if len(text) < min_chars:
                stats["short"] += 1
            else:
                f.write(text + "\n")
                stats["lines_written"] += 1

        doc: list[str] = []

        def end_document() -> None:
            if doc:
                stats["documents"] += 1
                if unit == "document":
                    emit(" ".join(doc))
                doc.clear()
                tick(stats["documents"], stats["lines_written"])

        for _, line in _iter_lines(path):
            para = _collapse(line)
            if not para:
                end_document()
                continue
            stats["paragraphs"] += 1
            doc.append(para)
            if unit == "paragraph":
                emit(para)
        end_document()
        if stats["lines_written"] == 0:
            raise InputError(f"produced no documents ({_fmt(stats)})", path)
    tick(stats["documents"], stats["lines_written"], force=True)
    log(f"{path.name}: {_fmt(stats)}")
    return dict(stats)


def text_to_lines(
    path: str | Path, out: str | Path, min_chars: int = 0, log: Log | None = None
) -> dict:
    """Validate and normalise a corpus that is already one document per line.

    Returns counts: documents (non-empty input lines), empty, lines_written, short.
    """
    log = _default_log(log)
    path = Path(path)
    stats = Counter(documents=0, empty=0, lines_written=0, short=0)
    tick = _Ticker(log, path.name, "documents")
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for _, line in _iter_lines(path):
            text = _collapse(line)
            if not text:
                stats["empty"] += 1
                continue
            stats["documents"] += 1
            if len(text) < min_chars:
                stats["short"] += 1
                continue
            f.write(text + "\n")
            stats["lines_written"] += 1
            tick(stats["documents"], stats["lines_written"])
        if stats["lines_written"] == 0:
            raise InputError(f"produced no documents ({_fmt(stats)})", path)
    tick(stats["documents"], stats["lines_written"], force=True)
    log(f"{path.name}: {_fmt(stats)}")
    return dict(stats)


__all__ = [
    "STOP_SECTIONS",
    "cc100_to_lines",
    "clean_wikitext",
    "read_multistream_index",
    "text_to_lines",
    "wikipedia_to_lines",
]


def split_text_file(text_path: str | Path, n_shards: int, out_dir: str | Path) -> list[Path]:
    """Split a text file into `n_shards` line-aligned pieces, like `split -n l/N`.

    Piece k ends at the first newline at or after byte k·(size // N) − 1 (GNU split's
    rule), so lines are never cut and the result depends only on the bytes. Pieces are
    named `<stem>.000<suffix>`, ... inside `out_dir`, which is replaced as a whole
    (atomically) so a failed split leaves no partial pieces. Raises InputError when the
    file has too few lines for every piece to be non-empty.
    """
    text_path = Path(text_path)
    out_dir = Path(out_dir)
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if not text_path.is_file():
        raise InputError("file does not exist", text_path)
    size = text_path.stat().st_size
    if size == 0:
        raise InputError("empty file: nothing to split", text_path)
    ends = _line_split_ends(text_path, size, n_shards)
    starts = [0, *ends[:-1]]
    if any(e <= s for s, e in zip(starts, ends, strict=True)):
        raise InputError(
            f"too few lines to split into {n_shards} non-empty line-aligned pieces; "
            "use fewer shards",
            text_path,
        )
    width = max(3, len(str(n_shards - 1)))
    names = [f"{text_path.stem}.{k:0{width}d}{text_path.suffix}" for k in range(n_shards)]
    with atomic_dir(out_dir) as tmp, open(text_path, "rb") as src:
        for name, start, end in zip(names, starts, ends, strict=True):
            src.seek(start)
            with open(tmp / name, "wb") as dst:
                _copy_bytes(src, dst, end - start)
    return [out_dir / name for name in names]


def _line_split_ends(path: Path, size: int, n: int) -> list[int]:
    # A line crossing several nominal boundaries leaves the pieces in between empty,
    # as in GNU split; the caller rejects that.
    with open(path, "rb") as f:
        ends = [_after_newline(f, max(k * (size // n) - 1, 0), size) for k in range(1, n)]
    return [*ends, size]


def _after_newline(f, pos: int, size: int, block: int = 1 << 16) -> int:
    """Offset just past the first b'\\n' at or after `pos` (or `size` if there is none)."""
    while pos < size:
        f.seek(pos)
        buf = f.read(block)
        i = buf.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(buf)
    return size


def _copy_bytes(src, dst, n: int, block: int = 16 << 20) -> None:
    while n > 0:
        buf = src.read(min(block, n))
        if not buf:
            raise OSError("file shrank while being split")
        dst.write(buf)
        n -= len(buf)


# --------------------------------------------------------------------------- reading
