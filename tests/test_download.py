"""Downloads against a local HTTP server and local files: resume, mirrors, checksums, zips."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from contriever_repro.data.download import download, extract_zip, md5sum, resolve_source
from contriever_repro.errors import InputError
from local_http import serve

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several chunks at chunk_size=4096
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with serve({"/data/archive.zip": PAYLOAD}) as httpd:
        yield httpd


def _base(httpd) -> str:
    return httpd.url


def _fast(**kw):
    """Small chunks, no backoff: exercises the loops without slowing the suite."""
    return {"chunk_size": 4096, "backoff": 0.0, "timeout": 5.0, **kw}


def test_http_download_verifies_and_logs_progress(server, tmp_path):
    lines: list[str] = []
    dest = tmp_path / "out" / "archive.zip"
    got = download(
        f"{_base(server)}/data/archive.zip",
        dest,
        PAYLOAD_MD5,
        log=lines.append,
        **_fast(log_interval=0.0),
    )
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("archive.zip.part").exists()
    progress = [line for line in lines if "/s" in line]
    assert progress and "ETA" in progress[0] and "KiB" in progress[-1]


def test_existing_file_with_right_md5_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "archive.zip"
    dest.write_bytes(PAYLOAD)
    download(f"{_base(server)}/data/archive.zip", dest, PAYLOAD_MD5, **_fast())
    assert server.state.requests == []


def test_existing_file_with_wrong_md5_is_replaced(server, tmp_path):
    dest = tmp_path / "archive.zip"
    dest.write_bytes(b"stale")
    download(f"{_base(server)}/data/archive.zip", dest, PAYLOAD_MD5, **_fast())
    assert dest.read_bytes() == PAYLOAD


def test_resume_requests_only_the_remaining_bytes(server, tmp_path):
    dest = tmp_path / "archive.zip"
    done = 30_000
    dest.with_name("archive.zip.part").write_bytes(PAYLOAD[:done])
    download(f"{_base(server)}/data/archive.zip", dest, PAYLOAD_MD5, **_fast())
    assert server.state.requests == [("/data/archive.zip", f"bytes={done}-")]
    assert server.state.bytes_sent == len(PAYLOAD) - done
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path):
    server.state.honour_range = False
    dest = tmp_path / "archive.zip"
    dest.with_name("archive.zip.part").write_bytes(b"x" * 1000)
    download(f"{_base(server)}/data/archive.zip", dest, PAYLOAD_MD5, **_fast())
    assert dest.read_bytes() == PAYLOAD
    assert server.state.bytes_sent == len(PAYLOAD)


def test_complete_part_file_rejected_by_server_restarts(server, tmp_path):
    dest = tmp_path / "archive.zip"
    dest.with_name("archive.zip.part").write_bytes(PAYLOAD)
    download(f"{_base(server)}/data/archive.zip", dest, PAYLOAD_MD5, **_fast())
    assert server.state.requests == [
        ("/data/archive.zip", f"bytes={len(PAYLOAD)}-"),
        ("/data/archive.zip", None),
    ]
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connection_is_retried_and_resumed(server, tmp_path):
    server.state.truncate_next = 1
    dest = tmp_path / "archive.zip"
    download(f"{_base(server)}/data/archive.zip", dest, PAYLOAD_MD5, **_fast())
    assert dest.read_bytes() == PAYLOAD
    (first, first_range), (second, second_range) = server.state.requests
    assert first_range is None
    assert second_range == f"bytes={len(PAYLOAD) // 2}-"


def test_persistent_server_error_gives_up_after_retries(server, tmp_path):
    server.state.status_override = 503
    with pytest.raises(InputError, match=r"after 3 attempts.*next run resumes it"):
        download(f"{_base(server)}/data/archive.zip", tmp_path / "a.zip", None, **_fast(retries=2))
    assert len(server.state.requests) == 3


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(InputError, match="HTTP 404"):
        download(f"{_base(server)}/nope.zip", tmp_path / "nope.zip", None, **_fast())
    assert len(server.state.requests) == 1
    assert not (tmp_path / "nope.zip").exists()


def test_checksum_mismatch_names_file_and_both_md5s_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "archive.zip"
    wrong = "0" * 32
    with pytest.raises(InputError) as info:
        download(f"{_base(server)}/data/archive.zip", dest, wrong, **_fast())
    message = str(info.value)
    assert str(dest) in message and wrong in message and PAYLOAD_MD5 in message
    assert "checksum mismatch" in message
    assert not dest.exists()
    assert not dest.with_name("archive.zip.part").exists()


def test_download_from_local_path_and_file_url(tmp_path):
    src = tmp_path / "src" / "archive.zip"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    a = download(str(src), tmp_path / "a.zip", PAYLOAD_MD5, **_fast())
    b = download(src.as_uri(), tmp_path / "b.zip", PAYLOAD_MD5, **_fast())
    assert a.read_bytes() == PAYLOAD and b.read_bytes() == PAYLOAD


def test_missing_local_source_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        download(str(tmp_path / "absent.zip"), tmp_path / "a.zip", None)


def test_resolve_source_mirror_forms():
    url = "https://public.example.org/beir/datasets/scifact.zip"
    assert resolve_source(url, None) == url
    assert resolve_source(url, "/data/mirror") == "/data/mirror/scifact.zip"
    assert resolve_source(url, "http://10.0.0.1/beir/") == "http://10.0.0.1/beir/scifact.zip"
    assert resolve_source(url, "file:///srv/beir") == "file:///srv/beir/scifact.zip"


def test_mirror_folder_redirects_download(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "archive.zip").write_bytes(PAYLOAD)
    # The origin host is unreachable on purpose: only the mirror may be used.
    url = "http://origin.invalid/datasets/archive.zip"
    dest = download(url, tmp_path / "a.zip", PAYLOAD_MD5, mirror=str(mirror), **_fast())
    assert dest.read_bytes() == PAYLOAD


def test_mirror_url_redirects_download(server, tmp_path):
    url = "http://origin.invalid/datasets/archive.zip"
    mirror = f"{_base(server)}/data/"
    dest = download(url, tmp_path / "a.zip", PAYLOAD_MD5, mirror=mirror, **_fast())
    assert dest.read_bytes() == PAYLOAD
    assert server.state.requests == [("/data/archive.zip", None)]


def test_md5sum_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert md5sum(path) == PAYLOAD_MD5


def _zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


DATASET = {
    "scifact/corpus.jsonl": b'{"_id": "1", "title": "", "text": "a"}\n',
    "scifact/queries.jsonl": b'{"_id": "q", "text": "b"}\n',
    "scifact/qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq\t1\t1\n",
}


def test_extract_zip_with_prefix_strips_it(tmp_path):
    zip_path = tmp_path / "scifact.zip"
    zip_path.write_bytes(_zip_bytes(DATASET))
    out = extract_zip(zip_path, tmp_path / "data" / "scifact", member_prefix="scifact")
    assert (out / "corpus.jsonl").read_bytes() == DATASET["scifact/corpus.jsonl"]
    assert (out / "qrels" / "test.tsv").exists()
    assert _leftovers(tmp_path / "data") == ["scifact"]


def test_extract_zip_without_prefix_and_replacing_old_output(tmp_path):
    zip_path = tmp_path / "scifact.zip"
    zip_path.write_bytes(_zip_bytes(DATASET))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("old")
    extract_zip(zip_path, out_dir)
    assert (out_dir / "scifact" / "queries.jsonl").exists()
    assert not (out_dir / "stale.txt").exists()
    assert _leftovers(tmp_path) == ["out", "scifact.zip"]


def test_truncated_zip_is_reported_and_leaves_nothing(tmp_path):
    zip_path = tmp_path / "scifact.zip"
    data = _zip_bytes(DATASET)
    zip_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        extract_zip(zip_path, tmp_path / "scifact", member_prefix="scifact/")
    message = str(info.value)
    assert str(zip_path) in message and "truncated or corrupt" in message and "delete" in message
    assert _leftovers(tmp_path) == ["scifact.zip"]


def test_corrupt_member_fails_crc_check_and_leaves_nothing(tmp_path):
    zip_path = tmp_path / "scifact.zip"
    data = bytearray(_zip_bytes(DATASET, compression=zipfile.ZIP_STORED))
    pos = data.index(b'"text": "a"')
    data[pos + 9] = ord("z")
    zip_path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="truncated or corrupt"):
        extract_zip(zip_path, tmp_path / "scifact", member_prefix="scifact/")
    assert _leftovers(tmp_path) == ["scifact.zip"]


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt", "..\\evil"])
def test_path_traversal_member_is_rejected(tmp_path, name):
    zip_path = tmp_path / "evil.zip"
    zip_path.write_bytes(_zip_bytes({"ok.txt": b"fine", name: b"pwned"}))
    out = tmp_path / "x" / "out"
    with pytest.raises(InputError, match="path traversal") as info:
        extract_zip(zip_path, out)
    assert str(zip_path) in str(info.value)
    assert _leftovers(tmp_path / "x") == []
    assert not (tmp_path / "evil.txt").exists()


def test_prefix_matching_nothing_lists_top_level_entries(tmp_path):
    zip_path = tmp_path / "scifact.zip"
    zip_path.write_bytes(_zip_bytes(DATASET))
    with pytest.raises(InputError, match=r"top-level entries are \['scifact'\]"):
        extract_zip(zip_path, tmp_path / "out", member_prefix="nfcorpus/")
    assert _leftovers(tmp_path) == ["scifact.zip"]


def test_zip_root_finds_single_top_folder(tmp_path):
    import zipfile as zf

    from contriever_repro.data.download import zip_root

    one = tmp_path / "one.zip"
    with zf.ZipFile(one, "w") as z:
        z.writestr("scifact/corpus.jsonl", "{}")
        z.writestr("scifact/qrels/test.tsv", "x")
    assert zip_root(one) == "scifact"
    flat = tmp_path / "flat.zip"
    with zf.ZipFile(flat, "w") as z:
        z.writestr("corpus.jsonl", "{}")
        z.writestr("qrels/test.tsv", "x")
    assert zip_root(flat) is None
