"""Linear plan and render (issue 19): `plan` of stacks with 500 / 5,000 host pools, and `render` (both targets) of
stacks with 1,000 / 10,000 workloads, each as the CLI runs it (a fresh process, output to /dev/null).

Baseline: PyYAML reading the same file with CSafeLoader (`yaml.load(f, Loader=yaml.CSafeLoader)`); the ratio is
the command's time over that. Targets: plan with 5,000 pools under 2 s, render of 10,000 workloads under 3 s.

    python3 benchmarks/plan_render_scale.py [--pools 500,5000] [--workloads 1000,10000] [--targets kubernetes,local]
                                            [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spec_scale import many_workloads  # noqa: E402


def many_pools(n: int, workloads: int = 1000) -> str:
    """n host pools of mixed sizes, arches, counts and virtualization, and `workloads` small workloads."""
    out = ["apiVersion: hybridorch.dev/v1alpha1", "kind: Stack", "metadata: {name: pools}", "spec:",
           "  policy: balanced", "  hosts:"]
    for i in range(n):
        arch = "arm64" if i % 5 == 4 else "amd64"
        out.append(f"    - {{name: pool{i}, arch: {arch}, cpu: '{4 * (1 + i % 8)}', memory: {8 * (1 + i % 6)}Gi, "
                   f"count: {1 + i % 4}, virtualization: {'true' if i % 3 else 'false'}}}")
    out.append("  workloads:")
    for i in range(workloads):
        out.append(f"    - {{name: w{i}, image: local/web:1, trust: trusted, replicas: {1 + i % 3}, "
                   f"resources: {{cpu: {100 * (1 + i % 10)}m, memory: {128 * (1 + i % 8)}Mi}}"
                   + (", arch: arm64" if i % 5 == 4 else "") + "}")
    return "\n".join(out) + "\n"


def yaml_seconds(path: str) -> float:
    started = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        yaml.load(f, Loader=yaml.CSafeLoader)
    return time.perf_counter() - started


def cli_seconds(args: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        done = subprocess.run([sys.executable, "-m", "hybridorch", *args], cwd=ROOT, stdout=sink,
                              stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        print(f"   {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[:200]}", flush=True)
    return time.perf_counter() - started, done.returncode


def row(label: str, path: str, args: list[str], target: float, runs: int) -> None:
    base = min(yaml_seconds(path) for _ in range(runs))
    took, code = min(cli_seconds(args + [path]) for _ in range(runs))   # the best of `runs`: others share the CPUs
    verdict = "ok" if code == 0 and took < target else "MISSED" if code == 0 else "FAILED"
    print(f"{label:<34} {os.path.getsize(path) / 2**20:6.2f} MiB  CSafeLoader {base:6.2f} s | {took:7.2f} s "
          f"({took / base:6.1f}x)  target < {target:g} s: {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="500,5000")
    parser.add_argument("--workloads", default="1000,10000")
    parser.add_argument("--targets", default="kubernetes,local")
    parser.add_argument("--runs", type=int, default=3, help="runs per measure; the best is shown")
    args = parser.parse_args()
    print(f"baseline: yaml.load(f, Loader=yaml.CSafeLoader), PyYAML {yaml.__version__}; each command a fresh process, "
          f"the best of {args.runs} runs, on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="hybridorch-bench-") as tmp:
        for n in [int(x) for x in args.pools.split(",") if x]:
            path = os.path.join(tmp, f"pools-{n}.yaml")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(many_pools(n))
            row(f"plan, {n:,} pools, 1,000 workloads", path, ["plan", "-o", "json"], 2.0, args.runs)
        for n in [int(x) for x in args.workloads.split(",") if x]:
            path = os.path.join(tmp, f"stack-{n}.yaml")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(many_workloads(n))
            for target in [t for t in args.targets.split(",") if t]:
                row(f"render --target {target}, {n:,} wl", path, ["render", "--target", target], 3.0, args.runs)


if __name__ == "__main__":
    main()
