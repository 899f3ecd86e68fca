"""Atomic writers: a full disk is one line naming the file and the space, and leaves nothing."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contriever_repro import io
from contriever_repro.cli import run_main
from contriever_repro.errors import DISK_FULL_EXIT_CODE, DiskFullError, InputError

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
FREE = 300 * 1024


def _corpus(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "doc_id": [str(i) for i in range(n)],
            "title": "t",
            "text": [f"w{i} " * 20 for i in range(n)],
        }
    )


@pytest.fixture
def free_300k(monkeypatch):
    monkeypatch.setattr(io, "free_bytes", lambda directory: FREE)


def _fail_mid_write(monkeypatch, error: BaseException):
    """pyarrow's writer puts some bytes in the temporary file, then the disk is full."""

    def write_table(table, where, **kw):
        Path(where).write_bytes(b"PAR1" + b"\0" * 5000)
        raise error

    monkeypatch.setattr(io.pq, "write_table", write_table)


@pytest.mark.parametrize(
    "error",
    [
        # what pyarrow 26 raises (measured on a full tmpfs)
        OSError(
            errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"
        ),
        # older pyarrow: an ArrowIOError/OSError that keeps only the text
        OSError("IOError: Error writing bytes to file. Detail: [errno 28] No space left on device"),
        OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
    ],
)
def test_full_disk_in_write_table_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, free_300k, error
):
    _fail_mid_write(monkeypatch, error)
    out = tmp_path / "out" / "corpus.parquet"
    with pytest.raises(DiskFullError) as info:
        io.write_table(_corpus(2000), out, "corpus")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{out}: ")
    reason = (
        "disk quota exceeded" if getattr(error, "errno", None) == errno.EDQUOT else "no space left"
    )
    assert reason in msg
    assert "needs up to about " in msg and "300.0 KiB free in " + str(out.parent) in msg
    assert info.value.needed > FREE and info.value.free == FREE
    assert list(out.parent.iterdir()) == [], "no partial or temporary file is left"


def test_a_previous_complete_output_is_not_touched(tmp_path, monkeypatch, free_300k):
    out = tmp_path / "corpus.parquet"
    io.write_table(_corpus(3), out, "corpus")
    before = out.read_bytes()
    _fail_mid_write(monkeypatch, ENOSPC)
    with pytest.raises(DiskFullError):
        io.write_table(_corpus(2000), out, "corpus")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.parquet"]


class _FillingFile:
    """A file that accepts `room` bytes and then fails like a full disk."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.real.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.real.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_full_disk_while_saving_embeddings(tmp_path, monkeypatch, free_300k):
    from contriever_repro.models.spec import ModelSpec
    from contriever_repro.retrieval import encode as enc

    def filling_open(path, mode):
        return _FillingFile(open(path, mode), 1000)  # noqa: SIM115 - closed by _FillingFile

    monkeypatch.setattr(io, "open", filling_open, raising=False)
    emb = np.ones((200, 384), np.float32)  # 307 200 bytes of data
    spec = ModelSpec(name="m", source="x")
    with pytest.raises(
        DiskFullError, match=r"corpus\.0-of-1\.npy: no space left on device"
    ) as info:
        enc.save_embeddings(
            tmp_path / "corpus.0-of-1", ["x"] * 200, emb, enc.embedding_meta(spec, "passage")
        )
    assert "needs about 300.1 KiB, 300.0 KiB free" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_errors_without_errno_count_as_full_only_on_a_nearly_full_disk(tmp_path, monkeypatch):
    # numpy's tofile and torch.save lose the errno; the file system's free space decides.
    def fail(tmp):
        tmp.write_bytes(b"x" * 10)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(io, "free_bytes", lambda d: 4096)
    with (
        pytest.raises(DiskFullError, match="no space left on device"),
        io.atomic_path(tmp_path / "model.pt") as tmp,
    ):
        fail(tmp)
    monkeypatch.setattr(io, "free_bytes", lambda d: 50 << 30)
    with (
        pytest.raises(RuntimeError, match="unexpected pos"),
        io.atomic_path(tmp_path / "model.pt") as tmp,
    ):
        fail(tmp)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_through_unchanged(tmp_path, free_300k):
    with pytest.raises(PermissionError), io.atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("partial")
        raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_in_atomic_dir_removes_the_folder(tmp_path, free_300k):
    # safetensors (Rust) reports the errno only in its text
    with (
        pytest.raises(DiskFullError, match="model: no space left on device"),
        io.atomic_dir(tmp_path / "model") as tmp,
    ):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )
    assert list(tmp_path.iterdir()) == []


def test_run_main_prints_one_line_and_exits_74(tmp_path, capsys, free_300k):
    def main():
        raise DiskFullError(tmp_path / "x.npy", FREE, 10 << 20, "no space left on device")

    with pytest.raises(SystemExit) as info:
        run_main(main)
    assert info.value.code == DISK_FULL_EXIT_CODE == 74
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert err_lines == [
        f"error: {tmp_path}/x.npy: no space left on device while writing it: needs about "
        f"10.0 MiB, 300.0 KiB free in {tmp_path}/ (no partial file was kept); free space and rerun"
    ]


def test_write_npy_is_byte_identical_to_np_save(tmp_path):
    arrays = [
        np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32),
        np.empty((0, 4), np.float32),
        np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        np.arange(10, dtype=np.float64)[::2],
    ]
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"ref{i}.npy", np.ascontiguousarray(a))
        io.write_npy(a, tmp_path / f"mine{i}.npy")
        assert (tmp_path / f"mine{i}.npy").read_bytes() == (tmp_path / f"ref{i}.npy").read_bytes()
        np.testing.assert_array_equal(np.load(tmp_path / f"mine{i}.npy"), a)


REAL_FULL_DISK = textwrap.dedent(
    """
    import os, sys
    import numpy as np, pandas as pd
    from contriever_repro import io
    from contriever_repro.cli import run_main

    where = sys.argv[1]

    def main():
        io.write_npy(np.zeros(10), os.path.join(where, "small.npy"))  # fits
        try:
            io.write_npy(np.random.rand(100_000), os.path.join(where, "big.npy"))
        finally:
            print("left:", sorted(os.listdir(where)), flush=True)

    run_main(main)
    """
)


def test_a_real_full_tmpfs(tmp_path):
    """A 256 KiB tmpfs in a private mount namespace (needs root and unshare; else skipped)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = f"mount -t tmpfs -o size=256k tmpfs {mnt} && umount {mnt}"
    if (
        not shutil.which("unshare")
        or subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode
    ):
        pytest.skip("cannot mount a tmpfs here (needs root and unshare -m)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    cmd = f'mount -t tmpfs -o size=256k tmpfs {mnt} && exec "$0" -c "$1" {mnt}'
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd, sys.executable, REAL_FULL_DISK],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == DISK_FULL_EXIT_CODE, proc.stderr
    assert "left: ['small.npy']" in proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert errors[0].startswith(f"error: {mnt}/big.npy: no space left on device while writing it: ")
    assert "needs about 781.4 KiB, " in errors[0]


def test_rows_of_a_table_are_read_from_their_row_groups_only(tmp_path):
    """An encoding shard reads its rows without loading the rest of the corpus: the
    slices equal pandas' and span row-group boundaries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contriever_repro.io import CORPUS_SCHEMA, read_table_rows, table_rows

    corpus = pd.DataFrame(
        {
            "doc_id": [str(i) for i in range(25)],
            "title": ["t"] * 25,
            "text": [f"x{i}" for i in range(25)],
        }
    )
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pandas(corpus, schema=CORPUS_SCHEMA), path, row_group_size=7)
    assert pq.ParquetFile(path).num_row_groups == 4
    assert table_rows(path) == 25
    for start, end in [(0, 25), (0, 7), (5, 16), (21, 25), (7, 7), (24, 30)]:
        got = read_table_rows(path, "corpus", start, end)
        pd.testing.assert_frame_equal(got, corpus.iloc[start:end].reset_index(drop=True))
    with pytest.raises(InputError, match="missing columns"):
        read_table_rows(path, "queries", 0, 1)
