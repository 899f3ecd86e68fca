"""Fetch and unpack dataset archives robustly: resumable, checksummed, atomic.

BEIR zips are large (MS MARCO is over 1 GB) and the servers are slow, so a
download streams to `<dest>.part`, resumes it with an HTTP Range request after an
interruption, and is renamed onto `dest` only once its md5 matches. Nothing that
looks complete to Snakemake ever exists before it has been verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ..progress import fmt_seconds

log = logging.getLogger(__name__)

URL_SCHEMES = ("http", "https", "file")
# Status codes worth another try: the server or a proxy is briefly unwell.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
TRANSIENT_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


class _Transient(Exception):
    """A failure the next attempt may not see (short read, dropped connection)."""


def md5sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks so a multi-GB archive needs no memory."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _basename(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    if not name:
        raise InputError(f"cannot take a file name from URL {url!r}")
    return urllib.parse.unquote(name)


def _is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme.lower() in URL_SCHEMES


def resolve_source(url: str, mirror: str | None) -> str:
    """Where to fetch `url` from: the URL itself, or `<mirror>/<basename>`.

    A mirror lets a cluster without internet (or a course sharing one copy) point
    every dataset at a local folder or an internal web server by one setting.
    """
    if not mirror:
        return url
    name = _basename(url)
    if _is_url(mirror):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(name)
    return str(Path(mirror).expanduser() / name)


def _local_path(source: str) -> Path | None:
    """The filesystem path for a plain path or file:// URL; None for http(s)."""
    parsed = urllib.parse.urlparse(source)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if scheme in ("http", "https"):
        return None
    return Path(source).expanduser()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class _Meter:
    """Log bytes done, rate and ETA at most every `interval` seconds."""

    def __init__(self, what: str, total: int | None, start: int, log_fn, interval: float):
        self.what, self.total, self.done = what, total, start
        self.start_bytes, self.log_fn, self.interval = start, log_fn, interval
        self.t0 = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.log_fn(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        rate = (self.done - self.start_bytes) / max(now - self.t0, 1e-9)
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = fmt_seconds((self.total - self.done) / rate) if rate > 0 else "?"
            return (
                f"{self.what}: {_fmt_bytes(self.done)} / {_fmt_bytes(self.total)} "
                f"({pct:.1f}%), {_fmt_bytes(rate)}/s, ETA {eta}"
            )
        return f"{self.what}: {_fmt_bytes(self.done)}, {_fmt_bytes(rate)}/s"


def _copy_stream(src, dst, meter: _Meter, chunk_size: int, expected: int | None) -> None:
    while chunk := src.read(chunk_size):
        dst.write(chunk)
        meter.add(len(chunk))
    if expected is not None and meter.done < expected:
        raise _Transient(f"connection closed after {meter.done} of {expected} bytes")


def _copy_local(src: Path, part: Path, chunk_size: int, log_fn, interval: float) -> None:
    """Copy a local file (or file:// URL) to `part`; always from the start, it is cheap."""
    if not src.is_file():
        raise InputError("download source does not exist", src)
    total = src.stat().st_size
    meter = _Meter(f"copying {src.name}", total, 0, log_fn, interval)
    with open(src, "rb") as fin, open(part, "wb") as fout:
        _copy_stream(fin, fout, meter, chunk_size, total)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _fetch_http(
    url: str, part: Path, chunk_size: int, timeout: float, log_fn, interval: float
) -> None:
    """One attempt: append to `part` from where it stops, or restart if Range is ignored."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "contriever-repro"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The partial file is as long as (or longer than) the file: start over.
            log_fn(f"server refused to resume {part.name} at byte {offset}; restarting")
            part.unlink()
            raise _Transient("range not satisfiable") from err
        if err.code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        raise InputError(f"download failed: HTTP {err.code} {err.reason} for {url}") from err
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        mode = "wb"
        start = 0
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                mode, start = "ab", offset
                log_fn(f"resuming {part.name} at {_fmt_bytes(offset)}")
            else:
                log_fn(f"server sent an unexpected range for {part.name}; restarting")
                response.close()
                part.unlink()
                raise _Transient("unexpected Content-Range")
        elif offset:
            log_fn(f"server ignored the Range request for {part.name}; restarting")
        total = None if length is None else start + length
        meter = _Meter(f"downloading {_basename(url)}", total, start, log_fn, interval)
        with open(part, mode) as fout:
            _copy_stream(response, fout, meter, chunk_size, total)
        log_fn(meter.line())


def download(
    url: str,
    dest: str | Path,
    md5: str | None,
    mirror: str | None = None,
    chunk_size: int = 1 << 20,
    log: Callable[[str], None] | None = None,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    log_interval: float = 10.0,
) -> Path:
    """Download `url` (or its mirror copy) to `dest`, verified by md5 when given.

    Streams to `<dest>.part` and resumes it after an interruption; retries
    transient network errors `retries` times with exponential backoff. A file
    already at `dest` with the right md5 (or any file, if md5 is None) is kept.
    """
    log_fn = log or logging.getLogger(__name__).info
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    if dest.exists():
        if md5 is None:
            log_fn(f"{dest} exists and no md5 is pinned; keeping it")
            return dest
        actual = md5sum(dest)
        if actual == md5:
            log_fn(f"{dest} exists with the expected md5; nothing to do")
            return dest
        log_fn(f"{dest} exists but its md5 is {actual}, expected {md5}; downloading again")

    source = resolve_source(url, mirror)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    local = _local_path(source)
    if local is not None:
        _copy_local(local, part, chunk_size, log_fn, log_interval)
    else:
        for attempt in range(retries + 1):
            try:
                _fetch_http(source, part, chunk_size, timeout, log_fn, log_interval)
                break
            except (_Transient, *TRANSIENT_ERRORS) as err:
                if isinstance(err, urllib.error.HTTPError):
                    raise
                if attempt == retries:
                    raise InputError(
                        f"could not download {source} after {retries + 1} attempts ({err}); "
                        f"the partial file {part} is kept and the next run resumes it",
                        dest,
                    ) from err
                wait = backoff * 2**attempt
                log_fn(f"download of {source} failed ({err}); retrying in {wait:.1f} s")
                time.sleep(wait)

    if md5 is not None:
        actual = md5sum(part)
        if actual != md5:
            part.unlink()
            raise InputError(
                f"checksum mismatch for {dest.name} from {source}: expected md5 {md5}, "
                f"got {actual}; the partial download was deleted",
                dest,
            )
    os.replace(part, dest)
    log_fn(f"saved {dest} ({_fmt_bytes(dest.stat().st_size)})")
    return dest


def _member_target(zip_path: Path, name: str, prefix: str | None) -> str | None:
    """The member's path relative to the output folder; None if outside `prefix`.

    Rejects absolute paths, drive letters, backslashes and `..`, so a crafted
    archive cannot write outside the folder (zip slip).
    """
    parts = PurePosixPath(name).parts
    if "\\" in name or name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise InputError(
            f"unsafe member name {name!r} (path traversal); refusing to extract", zip_path
        )
    if prefix is None:
        return name
    if not name.startswith(prefix):
        return None
    return name[len(prefix) :]


def _replace_dir(new: Path, dest: Path) -> None:
    """Put `new` at `dest` by renames, removing an older `dest` only afterwards."""
    if not dest.exists():
        os.replace(new, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    old.rmdir()
    os.replace(dest, old)
    os.replace(new, dest)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def extract_zip(
    zip_path: str | Path, dest_dir: str | Path, member_prefix: str | None = None
) -> Path:
    """Unpack `zip_path` into `dest_dir` atomically; returns `dest_dir`.

    With `member_prefix` (e.g. "scifact/"), only members under it are unpacked and
    the prefix is stripped, so `dest_dir` becomes the dataset folder itself. Every
    member's CRC is checked while it is written (what zipfile.testzip does, in the
    same pass), into a temporary sibling folder that is renamed onto `dest_dir`
    only when all of it succeeded; an existing `dest_dir` is replaced.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if not zip_path.is_file():
        raise InputError("zip file does not exist", zip_path)
    prefix = None
    if member_prefix:
        prefix = member_prefix.strip("/") + "/"
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".tmp", dir=dest_dir.parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                infos = zf.infolist()
                targets = [
                    (info, _member_target(zip_path, info.filename, prefix)) for info in infos
                ]
                targets = [(info, rel) for info, rel in targets if rel]
                if not targets:
                    tops = sorted({i.filename.split("/", 1)[0] for i in infos})[:10]
                    raise InputError(
                        f"no members under {prefix!r}; top-level entries are {tops}", zip_path
                    )
                for info, rel in targets:
                    target = tmp / rel
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise InputError(
                f"archive is truncated or corrupt ({err}); delete it so that the next run "
                "downloads it again",
                zip_path,
            ) from err
        _replace_dir(tmp, dest_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %d members of %s into %s", len(targets), zip_path, dest_dir)
    return dest_dir


def zip_root(zip_path: str | Path) -> str | None:
    """The single top-level folder of an archive (BEIR zips hold `<name>/...`), else None.

    Unpacking with this prefix makes the output folder the data set folder itself,
    whatever the archive calls its top folder (the Touché v1 mirror names it differently).
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = [n for n in zf.namelist() if not n.startswith("__MACOSX")]
    except zipfile.BadZipFile as err:
        raise InputError(
            f"not a readable zip archive (truncated or corrupt: delete it to re-download): {err}",
            zip_path,
        ) from err
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop()
    return None


def md5_from_listing(listing: str, filename: str, source: str = "checksum listing") -> str:
    """The md5 of `filename` in an `md5sum`-style listing (`<md5>  <name>` per line), as
    Wikimedia publishes next to every dump (`<wiki>-<date>-md5sums.txt`)."""
    for lineno, line in enumerate(listing.splitlines(), 1):
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            digest = parts[0].lower()
            if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
                raise InputError(f"not an md5 for {filename}: {parts[0]!r}", source, lineno)
            return digest
    raise InputError(f"lists no md5 for {filename}", source)
