"""The shape of the package, for the redesign's before/after figures: lines per package, modules at the top,
import-linter contracts (kept/broken), the longest function and class, and string comparisons of runtime names.

Usage: python3 benchmarks/structure.py [CHECKOUT]   (default: this checkout; another checkout measures an older
commit the same way, e.g. a `git worktree` of it).
"""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.test_layers import long_units, string_comparisons  # noqa: E402  (one home for both measures)


def units(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            out.append((node.end_lineno - first + 1, kind, node.name))
    return out


def contracts(root: Path) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    names = [s for s in cfg.sections() if s.startswith("importlinter:contract:")]
    if not names:
        return "0 (none configured)"
    run = subprocess.run(["lint-imports", "--no-cache"], cwd=root, capture_output=True, text=True)
    kept = run.stdout.count(" KEPT")
    return f"{len(names)} ({kept} kept, {len(names) - kept} broken)"


def main() -> None:
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE
    pkg = root / "hybridorch"
    files = sorted(pkg.rglob("*.py"))
    lines: Counter[str] = Counter()
    for f in files:
        rel = f.relative_to(pkg)
        where = "(top)" if len(rel.parts) == 1 else rel.parts[0] + "/"
        lines[where] += len(f.read_text().splitlines())
    tops = [f for f in files if f.parent == pkg]
    print(f"checkout: {root}")
    print(f"modules: {len(files)}, lines: {sum(lines.values())}")
    for where, n in sorted(lines.items()):
        print(f"  {where:12} {n:6} lines")
    print(f"modules directly in hybridorch/: {len(tops)} "
          f"({sum(len(f.read_text().splitlines()) for f in tops)} lines)")
    all_units = [(n, kind, f"{f.relative_to(root)}:{name}") for f in files for n, kind, name in units(f)]
    for kind in ("function", "class"):
        n, _, where = max(u for u in all_units if u[1] == kind)
        print(f"longest {kind}: {where} ({n} lines)")
    print(f"functions over 60 lines / classes over 300: {sum(len(long_units(f)) for f in files)}")
    print(f"string comparisons of runtime names and option values: "
          f"{sum(len(string_comparisons(f)) for f in files if f.name != 'runtime.py')}")
    print(f"import-linter contracts: {contracts(root)}")


if __name__ == "__main__":
    main()
