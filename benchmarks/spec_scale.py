"""Loading large stacks: `validate` (spec.load_stack) and the full `plan` (api.plan_stack) of generated stacks with
1,000 / 10,000 / 100,000 workloads, and the 600-byte stack (ten workloads of 1,000 replicas on one 10,000-host pool).

Baseline: PyYAML alone loading the same file (yaml.load with CSafeLoader, the libyaml loader the project uses
when it is installed, else SafeLoader; the line below says which). Targets (issue 10): 10,000 workloads in
under 2 s, 100,000 in under 20 s, the 600-byte file in under 1 s, memory linear.

    python3 benchmarks/spec_scale.py [--sizes 1000,10000,100000] [--skip-plan]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from typing import Callable

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hybridorch.api import plan_stack  # noqa: E402
from hybridorch.core.spec import load_stack  # noqa: E402

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def many_workloads(n: int) -> str:
    """n small workloads of several kinds (plain, with ports, labels, env, volumes) on a pool big enough."""
    out = ["apiVersion: hybridorch.dev/v1alpha1", "kind: Stack", "metadata: {name: big}", "spec:",
           "  policy: efficient",
           f"  hosts: [{{name: pool, cpu: '64', memory: 256Gi, count: {min(10000, max(10, n // 100))}}}]",
           "  workloads:"]
    for i in range(n):
        out.append(f"    - name: w{i}\n      image: local/web:1\n      trust: trusted\n"
                   f"      resources: {{cpu: 100m, memory: 64Mi}}\n      labels: {{app: w{i}, tier: t{i % 7}}}")
        if i % 3 == 0:
            out.append(f"      ports: [{{port: 8080, hostPort: {1024 + i % 60000}}}]" if i < 60000 else "      ports: []")
        if i % 5 == 0:
            out.append("      env: {MODE: fast, LEVEL: '3'}")
    return "\n".join(out) + "\n"


SIX_HUNDRED_BYTES = """\
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {name: wide}
spec:
  hosts: [{name: pool, cpu: "16", memory: 64Gi, count: 10000}]
  workloads:
""" + "".join(f"    - {{name: w{i}, image: web, replicas: 1000}}\n" for i in range(10))


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds (without tracing) and peak traced memory in MiB (a second, traced run)."""
    gc.collect()
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    gc.collect()
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def row(label: str, path: str, skip_plan: bool, size: int) -> None:
    text = open(path, encoding="utf-8").read()
    base, base_mem = measure(lambda: yaml.load(text, Loader=LOADER))
    val, val_mem = measure(lambda: load_stack(path))
    line = (f"{label:<28} {size / 2**20:7.2f} MiB  yaml.load {base:7.2f} s {base_mem:7.0f} MiB | "
            f"validate {val:7.2f} s ({val / base:4.1f}x) {val_mem:7.0f} MiB")
    if not skip_plan:
        plan, plan_mem = measure(lambda: plan_stack(path))
        line += f" | plan {plan:7.2f} s ({plan / base:4.1f}x) {plan_mem:7.0f} MiB"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--skip-plan", action="store_true", help="only validate (load_stack)")
    args = parser.parse_args()
    print(f"baseline: yaml.load with {LOADER.__name__} (PyYAML {yaml.__version__}); time of one run, peak memory "
          "of a second run under tracemalloc")
    with tempfile.TemporaryDirectory(prefix="hybridorch-bench-") as tmp:
        for n in [int(x) for x in args.sizes.split(",") if x]:
            path = os.path.join(tmp, f"stack-{n}.yaml")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(many_workloads(n))
            row(f"{n:,} workloads", path, args.skip_plan, os.path.getsize(path))
        path = os.path.join(tmp, "wide.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(SIX_HUNDRED_BYTES)
        row(f"{len(SIX_HUNDRED_BYTES)}-byte, 10x1000 replicas", path, args.skip_plan, len(SIX_HUNDRED_BYTES))


if __name__ == "__main__":
    main()
