"""Layer boundaries: the pure core does no I/O; only backends import the runtime SDKs; only proc.py spawns
processes; backends do not import each other; vm/ and soc do not import backends; the shared facts module is
pure; the library never writes to stderr (the CLI prints)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hybridorch.backends.base import REGISTRY
from tests.conftest import ROOT

PACKAGE = ROOT / "hybridorch"
PURE = ["spec", "schema", "policy", "packing", "plan", "report", "labels", "errors", "audit", "capacity", "runtime",
        "vm/domain", "vm/console"]
IO_MODULES = {"subprocess", "docker", "kubernetes", "socket", "shutil", "urllib", "http", "tempfile", "requests"}
BACKENDS = {target.split(":")[0].rsplit(".", 1)[-1] for target in REGISTRY.values()}   # docker, qemu, ...


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, relative ones resolved to absolute (hybridorch.x.y), lazy imports included."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_of_resolves_relative_imports():
    # the checks below are only as good as this: a relative import must come out as the module it names
    assert "hybridorch.backends.base.Backend" in imports_of(PACKAGE / "backends" / "docker.py")
    assert "hybridorch.errors" in imports_of(PACKAGE / "vm" / "boot.py")
    assert "hybridorch.errors" in imports_of(PACKAGE / "spec.py")


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_no_io_and_no_backend(module):
    found = imports_of(PACKAGE / f"{module}.py")
    bad = {n for n in found if n.split(".")[0] in IO_MODULES or "backends" in n}
    assert not bad, f"hybridorch/{module}.py imports {sorted(bad)}"


def test_the_shared_facts_module_does_no_io():
    tree = ast.parse((PACKAGE / "runtime.py").read_text())
    io_calls = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "exists", "is_file", "is_dir",
                "mkdir", "glob", "rglob", "iterdir", "stat", "unlink", "system", "popen", "listdir", "walk"}
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not called & io_calls, f"hybridorch/runtime.py calls {sorted(called & io_calls)}"
    allowed = {"__future__", "os", "dataclasses", "enum", "pathlib", "typing", "hybridorch"}
    assert {n.split(".")[0] for n in imports_of(PACKAGE / "runtime.py")} <= allowed


def test_only_backends_import_runtime_sdks():
    for path in library_files():
        if "backends" in path.parts:
            continue
        top = {n.split(".")[0] for n in imports_of(path)}
        assert not top & {"docker", "kubernetes"}, f"{path} imports a runtime SDK"


def test_only_proc_runs_processes():
    offenders = []
    for path in library_files():
        names = imports_of(path)
        if path != PACKAGE / "proc.py" and ({n.split(".")[0] for n in names} & {"subprocess"}
                                             or {"os.system", "os.popen", "os.spawnv", "os.execv"} & names
                                             or any(n.startswith("asyncio.subprocess") for n in names)):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"only hybridorch/proc.py may run processes: {offenders}"


def test_backends_do_not_import_each_other():
    assert {"docker", "qemu", "kubernetes", "local"} <= BACKENDS
    for path in sorted((PACKAGE / "backends").glob("*.py")):
        own = path.stem
        others = {f"hybridorch.backends.{b}" for b in BACKENDS - {own}}
        bad = {n for n in imports_of(path) if any(n == o or n.startswith(o + ".") for o in others)}
        assert not bad, f"{path.relative_to(ROOT)} imports another backend: {sorted(bad)} (use base.get_backend)"


@pytest.mark.parametrize("where", ["vm", "soc.py", "runtime.py", "proc.py", "guest.py"])
def test_the_vm_engine_and_soc_do_not_import_backends(where):
    paths = sorted((PACKAGE / where).rglob("*.py")) if (PACKAGE / where).is_dir() else [PACKAGE / where]
    for path in paths:
        bad = {n for n in imports_of(path) if n.startswith("hybridorch.backends")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def _stderr_writes(path: Path) -> list[int]:
    """Lines where a module touches sys.stderr, outside its command line: the `if __name__ == "__main__"` block
    and the `main` function such a module runs from it."""
    tree = ast.parse(path.read_text())
    allowed: set[int] = set()
    has_main_block = False
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            has_main_block = True
            allowed |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    for node in tree.body:
        if has_main_block and isinstance(node, ast.FunctionDef) and node.name == "main":
            allowed |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    found = []
    for node in ast.walk(tree):
        stderr = (isinstance(node, ast.Attribute) and node.attr in ("stderr", "__stderr__")
                  and isinstance(node.value, ast.Name) and node.value.id == "sys") or \
                 (isinstance(node, ast.ImportFrom) and node.module == "sys"
                  and any(a.name in ("stderr", "__stderr__") for a in node.names))
        if stderr and node.lineno not in allowed:
            found.append(node.lineno)
    return found


def test_the_library_never_writes_to_stderr():
    offenders = {str(p.relative_to(ROOT)): lines for p in library_files()
                 if p.name != "cli.py" and (lines := _stderr_writes(p))}
    assert offenders == {}, f"library modules write to stderr (return results; the CLI prints): {offenders}"


def test_the_stderr_check_sees_a_library_write(tmp_path):
    lib = tmp_path / "lib.py"
    lib.write_text("import sys\n\ndef f():\n    print('x', file=sys.stderr)\n\n\ndef main():\n"
                   "    sys.stderr.write('usage')\n")
    assert _stderr_writes(lib) == [4, 8]          # no __main__ block: main() is library code too
    lib.write_text(lib.read_text() + "\n\nif __name__ == '__main__':\n    sys.stderr.write('x')\n    main()\n")
    assert _stderr_writes(lib) == [4]


def test_test_module_basenames_are_unique_across_tests_and_e2e():
    # pytest (rootdir without __init__.py) refuses to collect two test modules of one basename in one run
    names = [p.name for d in ("tests", "e2e") for p in (ROOT / d).glob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
