"""Mr. TyDi v1.1: one release archive per language, turned into a BEIR folder.

The authors (`data_scripts/convertmrtydi2beir.py`, spec §12) unpack a language's
`mrtydi-v1.1-<name>.tar.gz`, gunzip its collection and write a BEIR folder:

* `corpus.jsonl`: every `collection/docs.jsonl` line with `id` renamed `_id` and
  `contents` renamed `text`; **`title` is set to ""** (the article title is dropped, so
  a passage is encoded as its text alone); other fields are kept;
* `queries.jsonl`: every row of the combined `topic.tsv` (`qid<TAB>question`, the
  topics of all splits), so BEIR later keeps the queries of the split it loads;
* `qrels/<split>.tsv`: header `query-id corpus-id score`, then columns 0, 2, 3 of the
  TREC qrels `qrels.<split>.txt` (`qid Q0 docid rel`).

`unpack_archive` writes the same folder in one streaming pass over the archive (the
collection is read from its tar member as a gzip stream, never stored uncompressed
twice) and checks what the authors' script does not: every qrels query is a topic,
every qrels document is in the collection, no id repeats, no line is malformed. The
folder appears complete or not at all.

Archive layout (the release's, as ir_datasets and pyserini read it), under one top
folder `mrtydi-v1.1-<name>/`: `collection/docs.jsonl.gz` (lines {"id", "title",
"contents"}, ids `<article>#<passage>` such as `15607#5`), `topic.tsv` and
`topic.<split>.tsv`, `qrels.<split>.txt` and `qrels.txt` (all splits).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import tarfile
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_dir, atomic_path
from ..progress import Progress

log = logging.getLogger(__name__)

MRTYDI_VERSION = "v1.1"
# ISO code -> the name in the release archive's file name, in the paper's table order.
MRTYDI_LANGUAGES: dict[str, str] = {
    "ar": "arabic",
    "bn": "bengali",
    "en": "english",
    "fi": "finnish",
    "id": "indonesian",
    "ja": "japanese",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
    "th": "thai",
}
SPLITS: tuple[str, ...] = ("train", "dev", "test")
ARCHIVE_URL = "https://git.uwaterloo.ca/jimmylin/mr.tydi/-/raw/master/data/{root}.tar.gz"

COLLECTION_MEMBER = "collection/docs.jsonl.gz"
TOPICS_MEMBER = "topic.tsv"

# Check the progress clock only every this many passages.
_PROGRESS_EVERY = 100_000


def archive_name(code: str) -> str:
    """The language's name in the release ("sw" -> "swahili")."""
    if code not in MRTYDI_LANGUAGES:
        raise InputError(
            f"unknown Mr. TyDi language {code!r}; the codes are {', '.join(MRTYDI_LANGUAGES)}"
        )
    return MRTYDI_LANGUAGES[code]


def archive_root(code: str) -> str:
    """The archive's top folder and file stem, e.g. "mrtydi-v1.1-swahili"."""
    return f"mrtydi-{MRTYDI_VERSION}-{archive_name(code)}"


def archive_url(code: str) -> str:
    return ARCHIVE_URL.format(root=archive_root(code))


def qrels_member(split: str) -> str:
    return f"qrels.{split}.txt"


# ----------------------------------------------------------------------------- lines


class _LineError(Exception):
    """A malformed line; the caller says where (a file, or an archive member)."""

    def __init__(self, message: str, lineno: int):
        super().__init__(message)
        self.message = message
        self.lineno = lineno


def _text_lines(raw_lines: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line break) of the non-blank lines."""
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _LineError(f"not valid UTF-8: {err}", lineno) from err
        if lineno == 1:
            line = line.lstrip("\ufeff")
        line = line.rstrip("\r\n")
        if line.strip():
            yield lineno, line


def _topic_rows(raw_lines: Iterable[bytes]) -> tuple[list[str], list[str]]:
    """Ids and questions of a `qid<TAB>question` file.

    The question is everything after the first tab (no Mr. TyDi question holds a tab;
    the authors' csv reader would keep only the text up to a second one).
    """
    ids: list[str] = []
    texts: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in _text_lines(raw_lines):
        if "\t" not in line:
            raise _LineError(f"expected 'qid<TAB>question', found no tab in {line!r:.100}", lineno)
        qid, text = line.split("\t", 1)
        qid = qid.strip()
        if not qid:
            raise _LineError("empty query id", lineno)
        if not text.strip():
            raise _LineError(f"query {qid!r} has an empty question", lineno)
        if qid in first_line:
            raise _LineError(
                f"duplicate query id {qid!r} (first on line {first_line[qid]})", lineno
            )
        first_line[qid] = lineno
        ids.append(qid)
        texts.append(text)
    return ids, texts


def _qrels_rows(raw_lines: Iterable[bytes]) -> Iterator[tuple[int, str, str, int]]:
    """(line, query id, doc id, relevance) of a TREC qrels file: `qid Q0 docid rel`."""
    for lineno, line in _text_lines(raw_lines):
        fields = line.split()
        if len(fields) != 4:
            raise _LineError(
                f"expected 4 whitespace-separated fields 'qid Q0 docid rel', got "
                f"{len(fields)} in {line!r:.100}",
                lineno,
            )
        qid, _, did, rel = fields
        try:
            relevance = int(rel)
        except ValueError:
            raise _LineError(f"relevance must be an integer, got {rel!r}", lineno) from None
        yield lineno, qid, did, relevance


def _open_lines(path: Path) -> IO[bytes]:
    if not path.is_file():
        raise InputError("file does not exist", path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_topics(path: str | Path) -> pd.DataFrame:
    """A topic file (`qid<TAB>question`, plain or .gz) as (query_id, text), file order."""
    path = Path(path)
    try:
        with _open_lines(path) as f:
            ids, texts = _topic_rows(f)
    except _LineError as err:
        raise InputError(err.message, path, err.lineno) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"truncated or corrupt gzip file: {err}", path) from err
    if not ids:
        raise InputError("no topics in the file", path)
    return pd.DataFrame({"query_id": ids, "text": texts}, dtype=object)


def read_trec_qrels(path: str | Path) -> pd.DataFrame:
    """A TREC qrels file (`qid Q0 docid rel`) as (query_id, doc_id, relevance int32)."""
    path = Path(path)
    try:
        with _open_lines(path) as f:
            rows = list(_qrels_rows(f))
    except _LineError as err:
        raise InputError(err.message, path, err.lineno) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"truncated or corrupt gzip file: {err}", path) from err
    if not rows:
        raise InputError("no qrels in the file", path)
    _, qids, dids, rels = zip(*rows, strict=True)
    df = pd.DataFrame({"query_id": qids, "doc_id": dids}, dtype=object)
    df["relevance"] = pd.Series(rels, dtype="int32")
    return df


def queries_per_split(qrels: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    """Distinct judged queries of each split's qrels (for log lines and checks)."""
    return {split: int(df["query_id"].nunique()) for split, df in qrels.items()}


# ----------------------------------------------------------------------------- doc ids


_PASSAGE_ID = re.compile(r"(0|[1-9][0-9]{0,11})#(0|[1-9][0-9]{0,5})")
_PASSAGES_PER_ARTICLE = 1_000_000


class _DocIds:
    """The collection's ids, exactly, in 8 bytes each where they allow it.

    English has 32.9M passages: a set of their strings would take ~3 GB, so ids in the
    release's form `<article>#<passage>` (no leading zeros) are held as one int64 each
    (~260 MB for English); any other id goes into a set. Duplicates among the int64
    keys are found once, at the end, by sorting.
    """

    def __init__(self) -> None:
        self.keys = array("q")
        self.other: dict[str, int] = {}  # id -> ordinal
        self.count = 0
        self.sorted: np.ndarray | None = None

    @staticmethod
    def key(doc_id: str) -> int | None:
        m = _PASSAGE_ID.fullmatch(doc_id)
        if m is None:
            return None
        return int(m.group(1)) * _PASSAGES_PER_ARTICLE + int(m.group(2))

    def add(self, doc_id: str) -> int | None:
        """Record the id; returns the ordinal of an earlier occurrence found at once."""
        key = self.key(doc_id)
        self.count += 1
        if key is not None:
            self.keys.append(key)
            return None
        if doc_id in self.other:
            return self.other[doc_id]
        self.other[doc_id] = self.count - 1
        return None

    def finish(self) -> tuple[int, int, int] | None:
        """Sort the keys; (key, first ordinal, second ordinal) of the id that repeats
        earliest in the file, if any."""
        keys = np.frombuffer(self.keys, dtype=np.int64) if len(self.keys) else np.zeros(0, "i8")
        self.sorted = np.sort(keys)
        repeated = self.sorted[1:][self.sorted[1:] == self.sorted[:-1]]
        if not len(repeated):
            return None
        first_seen: dict[int, int] = {}
        for i in np.flatnonzero(np.isin(keys, repeated)).tolist():
            key = int(keys[i])
            if key in first_seen:
                return key, self._ordinal(first_seen[key]), self._ordinal(i)
            first_seen[key] = i
        raise AssertionError("unreachable: a repeated key occurs twice")

    def _ordinal(self, i: int) -> int:
        """The ordinal among all ids of the i-th int64 key (the other ids sit between)."""
        others = np.array(sorted(self.other.values()), dtype=np.int64)
        return i + int(np.searchsorted(others - np.arange(len(others)), i, "right"))

    @staticmethod
    def id_of(key: int) -> str:
        article, passage = divmod(key, _PASSAGES_PER_ARTICLE)
        return f"{article}#{passage}"

    def __contains__(self, doc_id: str) -> bool:
        key = self.key(doc_id)
        if key is None:
            return doc_id in self.other
        assert self.sorted is not None, "finish() first"
        i = int(np.searchsorted(self.sorted, key))
        return i < len(self.sorted) and int(self.sorted[i]) == key


# ----------------------------------------------------------------------------- unpacking


class _CountingReader(io.RawIOBase):
    """Counts the compressed bytes gzip has read, for progress by bytes."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.done += n
        return n


def _write_corpus(
    archive: Path, member: str, raw: IO[bytes], size: int, out: Path
) -> tuple[_DocIds, int]:
    """Stream a docs.jsonl.gz member into corpus.jsonl as the authors write it."""
    ids = _DocIds()
    blank_lines: list[int] = []  # so that an ordinal can be turned back into a line
    counting = _CountingReader(raw)
    progress = Progress(size, f"unpacking {member}", log, unit="bytes")
    reported = 0

    def fail(message: str, lineno: int | None = None) -> InputError:
        where = f"line {lineno} of {member}" if lineno is not None else member
        return InputError(f"{where}: {message}", archive)

    lineno = 0
    try:
        with (
            gzip.GzipFile(fileobj=io.BufferedReader(counting, 1 << 20)) as lines,
            open(out, "w", encoding="utf-8", buffering=1 << 20) as dst,
        ):
            for lineno, raw_line in enumerate(lines, 1):
                if not raw_line.strip():
                    blank_lines.append(lineno)
                    continue
                try:
                    row = json.loads(raw_line)
                except ValueError as err:
                    raise fail(f"malformed JSON: {err}", lineno) from None
                if not isinstance(row, dict):
                    raise fail(f"expected a JSON object, got {type(row).__name__}", lineno)
                doc_id, text = row.pop("id", None), row.pop("contents", None)
                if isinstance(doc_id, int) and not isinstance(doc_id, bool):
                    doc_id = str(doc_id)
                if not isinstance(doc_id, str) or not doc_id:
                    raise fail(f"'id' must be a non-empty string, got {doc_id!r:.100}", lineno)
                if not isinstance(text, str):
                    raise fail(f"passage {doc_id!r}: 'contents' must be a string", lineno)
                earlier = ids.add(doc_id)
                if earlier is not None:
                    first = _line_of(earlier, blank_lines)
                    raise fail(f"duplicate doc id {doc_id!r} (first on line {first})", lineno)
                row.pop("title", None)
                out_row = {"_id": doc_id, "title": "", "text": text, **row}
                dst.write(json.dumps(out_row, ensure_ascii=False) + "\n")
                if ids.count % _PROGRESS_EVERY == 0:
                    progress.update(counting.done - reported)
                    reported = counting.done
    except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.ReadError) as err:
        raise fail(
            f"cannot read past line {lineno}: truncated or corrupt ({err}); delete the "
            "archive so that the next run downloads it again"
        ) from err
    progress.update(size - reported)
    if ids.count == 0:
        raise fail("the collection holds no passages")
    repeated = ids.finish()
    if repeated is not None:
        key, first, second = repeated
        raise fail(
            f"duplicate doc id {ids.id_of(key)!r} (first on line {_line_of(first, blank_lines)})",
            _line_of(second, blank_lines),
        )
    return ids, ids.count


def _line_of(ordinal: int, blank_lines: list[int]) -> int:
    """The line number of the passage with this 0-based ordinal."""
    line = ordinal + 1
    for blank in blank_lines:
        if blank <= line:
            line += 1
        else:
            break
    return line


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def unpack_archive(
    archive: str | Path,
    out_folder: str | Path,
    splits: Sequence[str] = SPLITS,
    required: Sequence[str] = ("test",),
    root: str | None = None,
) -> dict[str, Any]:
    """Turn a Mr. TyDi release archive into a BEIR folder, as the authors did.

    One streaming pass over the tar.gz: the collection member is decompressed as it is
    read and written straight to corpus.jsonl; the topic and qrels members (small) are
    held in memory and checked once the collection's ids are known. `qrels/<split>.tsv`
    is written for each of `splits` the archive has; each of `required` must be there.
    `root` is the top folder the archive must have (e.g. "mrtydi-v1.1-swahili"); by
    default whatever single top folder it has.

    Memory: the collection's ids are held (int64 per `<article>#<passage>` id: about
    260 MB for English's 32.9M passages) plus the topics and qrels. Disk: corpus.jsonl
    (about 1.2 times the uncompressed collection) in a temporary folder beside
    `out_folder`, renamed onto it only when everything was checked; a failure leaves
    nothing. Returns counts: docs, queries, and per split its judged queries and rows.
    """
    archive, out_folder = Path(archive), Path(out_folder)
    if not archive.is_file():
        raise InputError("archive does not exist", archive)
    bad = [s for s in (*splits, *required) if s not in SPLITS]
    if bad:
        raise InputError(f"unknown Mr. TyDi split(s) {bad}; the splits are {list(SPLITS)}")
    wanted = {TOPICS_MEMBER, *(qrels_member(s) for s in splits)}
    small: dict[str, bytes] = {}
    members: list[str] = []
    ids: _DocIds | None = None
    top: str | None = None
    with atomic_dir(out_folder) as tmp:
        try:
            with tarfile.open(archive, "r|gz") as tar:
                for info in tar:
                    name = _member_name(info.name)
                    if not name or name.rsplit("/", 1)[-1].startswith("._"):
                        continue  # "./" itself, macOS resource forks
                    head = name.split("/", 1)[0]
                    if top is None:
                        top = head
                        if root is not None and top != root:
                            raise InputError(
                                f"the archive's top folder is {top!r}, expected {root!r} "
                                "(the archive of another language or version?)",
                                archive,
                            )
                    elif head != top:
                        raise InputError(
                            f"member {name!r} lies outside the top folder {top!r}", archive
                        )
                    rel = name[len(top) + 1 :]
                    if not info.isfile():
                        continue
                    members.append(rel)
                    if rel == COLLECTION_MEMBER:
                        src = tar.extractfile(info)
                        assert src is not None
                        ids, _ = _write_corpus(archive, name, src, info.size, tmp / "corpus.jsonl")
                    elif rel in wanted:
                        src = tar.extractfile(info)
                        assert src is not None
                        small[rel] = src.read()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise InputError(
                f"archive is truncated or corrupt ({err}); delete it so that the next run "
                "downloads it again",
                archive,
            ) from err
        if top is None:
            raise InputError("the archive is empty", archive)

        def missing(rel: str) -> InputError:
            listed = ", ".join(sorted(members)[:20])
            return InputError(f"no member {top}/{rel} (members: {listed or 'none'})", archive)

        if ids is None:
            raise missing(COLLECTION_MEMBER)
        if TOPICS_MEMBER not in small:
            raise missing(TOPICS_MEMBER)
        for split in required:
            if qrels_member(split) not in small:
                raise missing(qrels_member(split))

        topics_member = f"{top}/{TOPICS_MEMBER}"
        try:
            qids, texts = _topic_rows(io.BytesIO(small[TOPICS_MEMBER]))
        except _LineError as err:
            raise InputError(
                f"line {err.lineno} of {topics_member}: {err.message}", archive
            ) from None
        if not qids:
            raise InputError(f"{topics_member} holds no topics", archive)
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
            for qid, text in zip(qids, texts, strict=True):
                f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
        topic_ids = set(qids)

        counts: dict[str, Any] = {"docs": ids.count, "queries": len(qids), "splits": {}}
        (tmp / "qrels").mkdir()
        for split in splits:
            rel = qrels_member(split)
            if rel not in small:
                log.warning("%s: no %s/%s; no qrels/%s.tsv", archive, top, rel, split)
                continue
            counts["splits"][split] = _write_qrels(
                archive, f"{top}/{rel}", small[rel], topic_ids, ids, tmp / "qrels" / f"{split}.tsv"
            )
        os.chmod(tmp, 0o777 & ~_umask())
    by_split = ", ".join(
        f"{s}: {c['queries']} queries / {c['qrels']} qrels" for s, c in counts["splits"].items()
    )
    log.info(
        "%s -> %s: %d passages, %d topics; %s",
        archive,
        out_folder,
        counts["docs"],
        counts["queries"],
        by_split,
    )
    return counts


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_qrels(
    archive: Path, member: str, data: bytes, topic_ids: set[str], ids: _DocIds, out: Path
) -> dict[str, int]:
    """Check one split's TREC qrels against the topics and the collection; write its TSV."""
    lines = ["query-id\tcorpus-id\tscore"]
    judged: set[str] = set()
    unknown_docs: list[tuple[int, str]] = []
    try:
        for lineno, qid, did, rel in _qrels_rows(io.BytesIO(data)):
            if qid not in topic_ids:
                raise InputError(
                    f"qrels line {lineno} of {member}: query {qid!r} is not in the topics "
                    f"({TOPICS_MEMBER})",
                    archive,
                )
            if did not in ids:
                unknown_docs.append((lineno, did))
                continue
            judged.add(qid)
            lines.append(f"{qid}\t{did}\t{rel}")
    except _LineError as err:
        raise InputError(f"qrels line {err.lineno} of {member}: {err.message}", archive) from None
    if unknown_docs:
        lineno, did = unknown_docs[0]
        raise InputError(
            f"qrels line {lineno} of {member}: doc {did!r} is not in the collection "
            f"({len(unknown_docs)} qrels line(s) name docs missing from it)",
            archive,
        )
    if len(lines) == 1:
        raise InputError(f"{member} holds no qrels", archive)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"queries": len(judged), "qrels": len(lines) - 1}


# ----------------------------------------------------------------------------- writing


def write_archive(
    path: str | Path,
    root: str,
    docs: Iterable[Mapping[str, Any]],
    topics: Mapping[str, Sequence[tuple[str, str]]],
    qrels: Mapping[str, Sequence[tuple[str, str, int]]],
) -> Path:
    """Write a tar.gz in the release's layout (the demo world's and the tests' archives).

    `docs` are {"id", "title", "contents"} rows; `topics` and `qrels` map a split to
    its (qid, question) and (qid, docid, rel) rows. Beside the per-split files the
    archive holds `topic.tsv` and `qrels.txt` with every split's rows, as the release
    does. The bytes depend on the arguments only (fixed times and owners).
    """
    path = Path(path)
    collection = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=collection, mtime=0) as gz:
        for d in docs:
            gz.write((json.dumps(dict(d), ensure_ascii=False) + "\n").encode("utf-8"))

    def topic_text(rows: Iterable[tuple[str, str]]) -> bytes:
        return "".join(f"{q}\t{t}\n" for q, t in rows).encode("utf-8")

    def qrels_text(rows: Iterable[tuple[str, str, int]]) -> bytes:
        return "".join(f"{q}\tQ0\t{d}\t{r}\n" for q, d, r in rows).encode("utf-8")

    files: list[tuple[str, bytes | None]] = [
        (root, None),
        (f"{root}/collection", None),
        (f"{root}/{COLLECTION_MEMBER}", collection.getvalue()),
        (f"{root}/{TOPICS_MEMBER}", topic_text(r for rows in topics.values() for r in rows)),
    ]
    files += [(f"{root}/topic.{s}.tsv", topic_text(rows)) for s, rows in topics.items()]
    files.append((f"{root}/qrels.txt", qrels_text(r for rows in qrels.values() for r in rows)))
    files += [(f"{root}/{qrels_member(s)}", qrels_text(rows)) for s, rows in qrels.items()]
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = 0, "", ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path
