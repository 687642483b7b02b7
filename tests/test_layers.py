"""Layer boundaries: the pure core does no I/O, and only backends import the runtime SDKs or spawn processes."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

PURE = ["spec", "schema", "policy", "packing", "plan", "report", "labels", "errors", "audit", "capacity"]
IO_MODULES = {"subprocess", "docker", "kubernetes", "socket", "shutil", "urllib", "http"}


def imports_of(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_no_io_and_no_backend(module):
    found = imports_of(ROOT / "hybridorch" / f"{module}.py")
    bad = {n for n in found if n.split(".")[0] in IO_MODULES or "backends" in n}
    assert not bad, f"hybridorch/{module}.py imports {sorted(bad)}"


def test_only_backends_import_runtime_sdks():
    for path in (ROOT / "hybridorch").rglob("*.py"):
        if "backends" in path.parts:
            continue
        top = {n.split(".")[0] for n in imports_of(path)}
        assert not top & {"docker", "kubernetes"}, f"{path} imports a runtime SDK"


def test_test_module_basenames_are_unique_across_tests_and_e2e():
    # pytest (rootdir without __init__.py) refuses to collect two test modules of one basename in one run
    names = [p.name for d in ("tests", "e2e") for p in (ROOT / d).glob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
