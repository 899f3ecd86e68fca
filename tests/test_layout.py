"""The library reads like the pipeline: one subpackage per stage (named like its rule file),
and no module imports from a stage that comes after its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "contriever_repro"
# Pipeline order. Cross-cutting modules at the top level: `base` ones any stage may use;
# plan/cli/provenance sit above every stage (they turn config into jobs and scripts).
STAGES = ["data", "models", "training", "retrieval", "evaluation", "reporting"]
BASE = {"errors", "io", "progress"}
TOP = {"plan", "cli", "provenance", "__init__"}


def _module(path: Path) -> list[str]:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    return parts


def _imports(path: Path) -> list[tuple[list[str], int]]:
    """(target module parts under the package, line) of every package-internal import."""
    here = _module(path)
    package = here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if node.module is None:  # from . import x, y
                    for alias in node.names:
                        out.append((target + [alias.name], node.lineno))
                    continue
                out.append((target, node.lineno))
            elif node.module and node.module.split(".")[0] == "contriever_repro":
                out.append((node.module.split(".")[1:], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "contriever_repro":
                    out.append((alias.name.split(".")[1:], node.lineno))
    return out


def _stage(parts: list[str]) -> str | None:
    return parts[0] if parts and parts[0] in STAGES else None


MODULES = sorted(LIB.rglob("*.py"))


def test_every_stage_has_its_rule_file():
    rules = {p.stem for p in (ROOT / "workflow" / "rules").glob("*.smk")}
    for stage in STAGES:
        assert (LIB / stage / "__init__.py").is_file(), stage
    assert set(STAGES) <= rules, sorted(rules)
    # the top level holds only the cross-cutting modules
    top = {p.stem for p in LIB.glob("*.py")}
    assert top <= BASE | TOP, sorted(top - BASE - TOP)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_no_module_imports_a_later_stage(path):
    here = _module(path)
    stage = _stage(here)
    for target, line in _imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {'.'.join(target) or '.'}"
        if target and target[0] in BASE:
            continue
        if stage is None:
            if here[-1] in BASE:
                assert not target or target[0] in BASE, where
            continue  # plan, cli, provenance: above every stage
        assert target and target[0] not in TOP - {"__init__"}, where
        target_stage = _stage(target)
        assert target_stage is not None, where
        assert STAGES.index(target_stage) <= STAGES.index(stage), where


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_nothing_imports_snakemake(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        assert not any(n.split(".")[0] == "snakemake" for n in names), path
