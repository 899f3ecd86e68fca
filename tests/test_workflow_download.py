"""The download rules run for real (snakemake subprocess, local executor) against a local
HTTP server on 127.0.0.1: both kinds of pre-training corpus, a mirror whose path needs
quoting, a mirror change that must not re-run anything, failures that must not be
repeated; and a local BEIR folder whose files are inputs of its conversion."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import string
from pathlib import Path

import pytest

from local_http import serve
from workflow_utils import ROOT, base_config, snakemake, write_config

pytestmark = pytest.mark.workflow

WIKI_NAME = "enwiki-20261101-pages-articles-multistream.xml.bz2"
WIKI = b"<mediawiki>" + bytes(range(256)) * 64 + b"</mediawiki>\n"
WIKI_MD5 = hashlib.md5(WIKI).hexdigest()
CC = b"first paragraph\nsecond paragraph\n\nanother document\n" * 200
CC_MD5 = hashlib.md5(CC).hexdigest()
# An md5sum listing as Wikimedia publishes it: other files, then ours.
LISTING = f"{'1' * 32}  enwiki-20261101-abstract.xml.gz\n{WIKI_MD5}  {WIKI_NAME}\n".encode()
FILES = {
    f"/enwiki/{WIKI_NAME}": WIKI,
    "/enwiki/enwiki-20261101-md5sums.txt": LISTING,
    "/cc-100/en.txt.xz": CC,
}
# A mirror folder that breaks an unquoted shell word twice: a space, and a `;` that
# would run `touch PWNED` in the job's working directory.
EVIL = "mir ror;touch PWNED"


def _config(tmp_path: Path, base: str, cc_md5: str | None = None, **extra) -> Path:
    """A minimal workflow config with one Wikipedia-style and one CC-100-style corpus."""
    config = (
        base_config(tmp_path)
        | extra
        | {
            "datasets": {"scifact": {}},
            "models": {"bm25": {"type": "bm25"}},
            "evaluation": {"top_k": 10, "k_values": [10], "ignore_identical_ids": True},
            "pretraining_corpora": {
                "wiki": {
                    "kind": "wikipedia",
                    "url": f"{base}/enwiki/{WIKI_NAME}",
                    "checksums_url": f"{base}/enwiki/enwiki-20261101-md5sums.txt",
                },
                "cc": {"kind": "cc100", "language": "en", "url": f"{base}/cc-100/en.txt.xz"},
            },
        }
    )
    if cc_md5:
        config["pretraining_corpora"]["cc"]["md5s"] = {"en.txt.xz": cc_md5}
    return write_config(tmp_path / "config.yaml", config)


def _targets(tmp_path: Path) -> tuple[Path, Path]:
    downloads = tmp_path / "work" / "downloads" / "corpora"
    return downloads / "wiki" / WIKI_NAME, downloads / "cc" / "en.txt.xz"


def _run(tmp_path, *args):
    return snakemake(*args, "--cores", "1", cwd=tmp_path, timeout=120)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_corpus_runs_for_both_kinds(tmp_path):
    with serve(FILES) as server:
        cfg = _config(tmp_path, server.url)
        wiki, cc = _targets(tmp_path)
        proc = _run(tmp_path, str(wiki), str(cc), "--configfile", str(cfg))
        assert proc.returncode == 0, proc.stderr[-3000:]
        asked = sorted(path for path, _ in server.state.requests)
    assert asked == sorted(FILES)
    assert wiki.read_bytes() == WIKI and cc.read_bytes() == CC
    # Wikipedia: verified against the listing's md5; CC-100: the md5 of what came.
    assert wiki.with_name(WIKI_NAME + ".md5").read_text() == f"{WIKI_MD5}  {WIKI_NAME}\n"
    assert cc.with_name("en.txt.xz.md5").read_text() == f"{CC_MD5}  en.txt.xz\n"
    assert _leftovers(wiki.parent) == [WIKI_NAME, WIKI_NAME + ".md5"]


def test_mirror_with_space_and_semicolon_is_one_word(tmp_path):
    mirror = tmp_path / EVIL
    mirror.mkdir()
    for path, data in FILES.items():
        (mirror / Path(path).name).write_bytes(data)
    # The origin is a closed port: every byte must come from the mirror folder.
    cfg = _config(tmp_path, "http://127.0.0.1:9", mirror=str(mirror))
    wiki, cc = _targets(tmp_path)
    proc = _run(tmp_path, str(wiki), str(cc), "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert wiki.read_bytes() == WIKI and cc.read_bytes() == CC
    assert not list(tmp_path.rglob("PWNED")) and not (ROOT / "PWNED").exists()


def test_changing_or_removing_the_mirror_reruns_nothing(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "en.txt.xz").write_bytes(CC)
    cfg = _config(tmp_path, "http://127.0.0.1:9", mirror=str(mirror))
    _, cc = _targets(tmp_path)
    proc = _run(tmp_path, str(cc), "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = cc.stat().st_mtime_ns
    for mirror_value in ("null", "http://other.invalid/cc-100/"):
        override = ("--config", f"mirror={mirror_value}")
        dry = _run(tmp_path, str(cc), "-n", "--configfile", str(cfg), *override)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout
        # --summary's status checks the code, input and params triggers in turn.
        summary = _run(tmp_path, str(cc), "--summary", "--configfile", str(cfg), *override)
        row = next(line for line in summary.stdout.splitlines() if line.startswith(str(cc)))
        assert "\tok\tno update" in row, row
    changes = _run(tmp_path, "--list-changes", "params", "--configfile", str(cfg), *override)
    assert changes.returncode == 0 and str(cc) not in changes.stdout, changes.stdout
    assert cc.stat().st_mtime_ns == before


@pytest.mark.parametrize("failure", ["not found", "checksum mismatch"])
def test_non_transient_failure_runs_once_and_leaves_nothing(tmp_path, failure):
    files = dict(FILES)
    if failure == "not found":
        del files["/cc-100/en.txt.xz"]
        expected = "HTTP 404"
    else:
        files["/cc-100/en.txt.xz"] = CC[:-1] + b"!"  # a corrupted copy
        expected = "checksum mismatch"
    with serve(files) as server:
        cfg = _config(tmp_path, server.url, cc_md5=CC_MD5)
        _, cc = _targets(tmp_path)
        # --retries 2 stands for a profile's retries: the rule's own 0 must win.
        proc = _run(tmp_path, str(cc), "--configfile", str(cfg), "--retries", "2")
        asked = [path for path, _ in server.state.requests]
    assert proc.returncode != 0
    assert asked == ["/cc-100/en.txt.xz"]
    assert "Trying to restart" not in proc.stdout + proc.stderr
    log = (tmp_path / "work" / "logs" / "download_corpus" / "cc" / "en.txt.xz.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], log
    assert _leftovers(cc.parent) == []


def _tiny_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"word{i} common text"} for i in range(3)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "word2"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    return folder


def test_editing_a_local_dataset_reruns_its_conversion(tmp_path):
    folder = _tiny_beir(tmp_path / "my data")
    cfg = write_config(
        tmp_path / "config.yaml",
        base_config(tmp_path)
        | {
            "datasets": {"mine": {"source": "local", "path": str(folder)}},
            "models": {"bm25": {"type": "bm25"}},
            "evaluation": {"top_k": 10, "k_values": [10], "ignore_identical_ids": True},
        },
    )
    target = str(tmp_path / "work" / "data" / "mine" / "corpus.parquet")
    proc = _run(tmp_path, target, "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    dry = _run(tmp_path, target, "-n", "--configfile", str(cfg))
    assert "Nothing to be done" in dry.stdout + dry.stderr
    edited = [folder / name for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")]
    stamp = os.stat(target).st_mtime + 10
    for path in edited:
        with open(path, "a") as fh:
            fh.write("\n")
        os.utime(path, (stamp, stamp))
    dry = _run(tmp_path, target, "-n", "--configfile", str(cfg))
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert re.search(r"(?m)^rule convert_beir:", dry.stdout), dry.stdout
    reason = re.search(r"(?m)^\s+reason: (.*)$", dry.stdout).group(1)
    assert all(str(path) in reason for path in edited), reason


# ----------------------------------------------------------------- shell quoting audit

# Shell fragments a helper builds itself (every value inside quoted with shlex.quote);
# everything else in a shell template must be `:q`.
FRAGMENTS = {
    "params.launch",
    "params.sources",
    "params.source",
    "params.shard_args",
    "params.args",
    "params.identical",
    "params.lenient",
    "params.normalize",
    "params.time_limit",
    "params.k_values",
}


def _shell_templates() -> dict[str, str]:
    """rule name -> its shell template, read from workflow/rules/*.smk."""
    out = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"(?ms)^rule (\w+):\n(.*?)(?=^\S|\Z)", text):
            shell = re.search(r"(?ms)^    shell:\n((?:\s*(?:#.*|\".*\")\n)+)", m.group(2))
            if shell:
                lines = [ln.strip() for ln in shell.group(1).splitlines()]
                parts = [ast.literal_eval(ln) for ln in lines if ln.startswith('"')]
                out[m.group(1)] = "".join(parts)
    return out


def test_every_value_in_a_shell_template_is_quoted():
    templates = _shell_templates()
    assert {"download_corpus", "download_beir", "convert_beir", "search", "pretrain"} <= set(
        templates
    )
    unquoted = [
        f"{rule}: {{{field}{':' + spec if spec else ''}}}"
        for rule, template in templates.items()
        for _, field, spec, _ in string.Formatter().parse(template)
        if field is not None and not (spec or "").endswith("q") and field not in FRAGMENTS
    ]
    assert unquoted == []


def _commands(stdout: str) -> list[str]:
    return [
        ln[len("Shell command: ") :]
        for ln in stdout.splitlines()
        if ln.startswith("Shell command: ")
    ]


def _assert_one_word(commands: list[str], root: str) -> None:
    """Paths under `root` reach the shell whole, inside one word, and no `;` runs a
    command: an unquoted one would be cut at the space, and `;` would be a token."""
    assert commands
    head = root.split(" ")[0]
    for cmd in commands:
        lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        assert ";" not in words, cmd
        for word in words:
            assert head not in word or root in word, (word, cmd)


def test_dry_run_commands_keep_odd_paths_as_one_word(tmp_path):
    root = str(tmp_path / EVIL)
    work, results, mirror = f"{root}/work", f"{root}/results", f"{root}/mirror"
    demo = snakemake(
        "-n", "-p", "--nolock", "--configfile", "config/demo.yaml",
        "--config", f"work_dir={work}", f"results_dir={results}",
        cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-3000:]
    commands = _commands(demo.stdout)
    rules = set(re.findall(r"(?m)^rule (\w+):", demo.stdout))
    assert {"convert_beir", "search", "prepare_corpus", "tokenize_piece", "pretrain"} <= rules
    _assert_one_word(commands, root)
    targets = [
        f"{work}/downloads/beir/scifact.zip",
        f"{work}/raw/beir/scifact",
        f"{work}/downloads/corpora/ccnet-en/en.txt.xz",
        f"{work}/downloads/corpora/wiki-en/{WIKI_NAME}",
    ]
    paper = snakemake(
        "-n", "-p", "--nolock", *targets,
        "--config", f"work_dir={work}", f"results_dir={results}", f"mirror={mirror}",
        cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert paper.returncode == 0, paper.stderr[-3000:]
    commands = _commands(paper.stdout)
    assert len(commands) == 4
    _assert_one_word(commands, root)
    downloads = [cmd for cmd in commands if "download_file.py" in cmd]
    assert len(downloads) == 3
    assert all(f"--mirror={shlex.quote(mirror)}" in cmd for cmd in downloads)
