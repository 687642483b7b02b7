"""Layer boundaries. The import-linter contracts in setup.cfg hold the layer order, the backends' independence,
the SDK boundary and the engine interface; this module runs them and keeps the checks import-linter cannot
express: only proc.py spawns processes, the shared facts module calls no I/O, the library never writes to
stderr, runtimes are compared as enums, and units stay small."""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "hybridorch"
MAX_TOP_MODULES = 8
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300


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


def test_imports_of_resolves_relative_imports(tmp_path):
    # the checks below are only as good as this: a relative import must come out as the module it names
    assert "hybridorch.backends.base.Backend" in imports_of(PACKAGE / "backends" / "docker.py")
    assert "hybridorch.errors" in imports_of(PACKAGE / "vm" / "boot.py")
    rel = PACKAGE / "vm" / "_probe_relative.py"
    try:
        rel.write_text("from ..errors import BackendError\nfrom . import console\n")
        assert {"hybridorch.errors.BackendError", "hybridorch.vm.console"} <= imports_of(rel)
    finally:
        rel.unlink()


def _contracts() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [s for s in cfg.sections() if s.startswith("importlinter:contract:")]


def test_the_import_contracts_are_all_kept():
    from importlinter import cli

    assert len(_contracts()) >= 5
    assert cli.lint_imports(config_filename=str(ROOT / "setup.cfg"), no_cache=True) == 0, \
        "an import-linter contract is broken: run `lint-imports` for the edge"


def test_the_layers_contract_names_every_package_and_top_module():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    layers = cfg["importlinter:contract:layers"]["layers"].split()
    tops = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "data"}
    assert {f"hybridorch.{n}" for n in tops | packages} <= set(layers) | {"hybridorch.data"}


def test_the_engine_interface_contract_forbids_every_concrete_backend_module():
    # a new backend helper module must not slip past the contract by being left off its list
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    forbidden = set(cfg["importlinter:contract:engine-interface"]["forbidden_modules"].split())
    concrete = {f"hybridorch.backends.{p.stem}" for p in (PACKAGE / "backends").glob("*.py")
                if p.stem not in ("__init__", "base", "events")}
    assert sorted(concrete - forbidden) == []


def test_few_modules_sit_at_the_top_of_the_package():
    tops = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(tops) <= MAX_TOP_MODULES, tops


def test_the_shared_facts_module_does_no_io():
    tree = ast.parse((PACKAGE / "core" / "runtime.py").read_text())
    io_calls = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "exists", "is_file", "is_dir",
                "mkdir", "glob", "rglob", "iterdir", "stat", "unlink", "system", "popen", "listdir", "walk"}
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not called & io_calls, f"hybridorch/core/runtime.py calls {sorted(called & io_calls)}"
    allowed = {"__future__", "os", "dataclasses", "enum", "pathlib", "typing", "hybridorch"}
    assert {n.split(".")[0] for n in imports_of(PACKAGE / "core" / "runtime.py")} <= allowed


def test_only_proc_runs_processes():
    offenders = []
    for path in library_files():
        names = imports_of(path)
        if path != PACKAGE / "proc.py" and ({n.split(".")[0] for n in names} & {"subprocess"}
                                             or {"os.system", "os.popen", "os.spawnv", "os.execv"} & names
                                             or any(n.startswith("asyncio.subprocess") for n in names)):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"only hybridorch/proc.py may run processes: {offenders}"


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
    return sorted(set(found))


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


# runtime names and the policy's option values: compared only as enum members outside core/runtime.py
ENUM_VALUES = {"container", "sandboxed", "vm", "nested", "kata", "gvisor", "auto", "runtime"}


def string_comparisons(path: Path) -> list[int]:
    """Lines comparing something with a runtime name or an option value written as a string literal (==, !=,
    in a tuple/set/list of them)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        literals = []
        for side in sides:
            if isinstance(side, ast.Constant):
                literals.append(side.value)
            elif isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                literals += [e.value for e in side.elts if isinstance(e, ast.Constant)]
        if any(isinstance(v, str) and v in ENUM_VALUES for v in literals):
            found.append(node.lineno)
    return sorted(set(found))


def test_runtimes_and_options_are_compared_as_enums():
    offenders = {str(p.relative_to(ROOT)): lines for p in library_files()
                 if p != PACKAGE / "core" / "runtime.py" and (lines := string_comparisons(p))}
    assert offenders == {}, f"compare Runtime/option enum members, not strings: {offenders}"


def test_the_string_comparison_check_sees_one(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f(p):\n    return p.runtime == 'vm' or p.runtime in ('nested', 'x') or p is None\n")
    assert string_comparisons(f) == [2]


def long_units(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            size = node.end_lineno - first + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if size > limit:
                out.append(f"{node.name} ({size} lines)")
    return out


def test_functions_and_classes_stay_small():
    offenders = {str(p.relative_to(ROOT)): units for p in library_files() if (units := long_units(p))}
    assert offenders == {}, f"split by job: functions <= {MAX_FUNCTION_LINES} lines, classes <= " \
                            f"{MAX_CLASS_LINES}: {offenders}"
