"""Auditing large inputs: `hybridorch audit` of generated manifest files with 10,000 / 100,000 Kubernetes objects,
and of a generated stack with 5,000 workloads (plan, both renderings and the rules).

Baseline: PyYAML alone loading the same file (yaml.load with CSafeLoader, the libyaml loader, else SafeLoader; the
line below says which). Targets (issue 19): 100,000 manifest objects in under 10 s; the 5,000-workload stack no
longer spends 25 s rendering (its audit is shown next to its plan).

    python3 benchmarks/audit_scale.py [--sizes 10000,100000] [--workloads 5000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hybridorch.api import plan_stack  # noqa: E402
from hybridorch.ops.audit_live import audit_files  # noqa: E402

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
NOW = 1_700_000_000.0


def manifest_object(i: int) -> str:
    """One of four object kinds, the way kubectl writes them (block style, labels, a timestamp, limits)."""
    meta = (f"metadata:\n  name: o{i}\n  namespace: ns{i % 50}\n  labels: {{app: o{i}, hybridorch.dev/ttl: 30d}}\n"
            f"  creationTimestamp: \"2024-01-{1 + i % 28:02d}T00:00:00Z\"\n")
    kind = i % 4
    if kind == 0:
        return ("apiVersion: apps/v1\nkind: Deployment\n" + meta +
                "spec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n"
                "      - name: web\n        image: nginx:1.27\n        ports: [{containerPort: 8080}]\n"
                "        resources: {limits: {cpu: 500m, memory: 256Mi}}\n")
    if kind == 1:
        return ("apiVersion: v1\nkind: Service\n" + meta +
                "spec:\n  type: ClusterIP\n  ports: [{port: 80, targetPort: 8080}]\n  selector: {app: web}\n")
    if kind == 2:
        return ("apiVersion: v1\nkind: Pod\n" + meta +
                f"spec:\n  hostNetwork: {'true' if i % 1000 == 2 else 'false'}\n  containers:\n  - name: job\n"
                "    image: busybox\n    command: [sh, -c, 'sleep 1']\n"
                "    securityContext: {privileged: false}\n    resources: {limits: {cpu: '1', memory: 64Mi}}\n")
    return ("apiVersion: v1\nkind: ConfigMap\n" + meta + "data:\n  key: value\n  other: |\n    multi\n    line\n")


def many_objects(n: int) -> str:
    return "---\n".join(manifest_object(i) for i in range(n))


def many_workloads(n: int) -> str:
    out = ["apiVersion: hybridorch.dev/v1alpha1", "kind: Stack", "metadata: {name: big, owner: ops, ttl: 30d}",
           "spec:", "  policy: efficient",
           f"  hosts: [{{name: pool, cpu: '64', memory: 256Gi, count: {max(10, n // 50)}}}]", "  workloads:"]
    for i in range(n):
        trust = ("trusted", "internal", "untrusted")[i % 3]
        out.append(f"    - {{name: w{i}, image: local/web:1, trust: {trust}, tenant: t{i % 20}, "
                   f"resources: {{cpu: 100m, memory: 64Mi}}, ports: [{{port: 8080}}]}}")
    return "\n".join(out) + "\n"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def manifests_row(n: int, directory: str) -> None:
    path = os.path.join(directory, f"objects-{n}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(many_objects(n))

    def baseline() -> None:
        with open(path, encoding="utf-8") as fh:
            list(yaml.load_all(fh, Loader=LOADER))
    base = timed(baseline)
    findings: list[object] = []
    audit = timed(lambda: findings.extend(audit_files([path], now=NOW)))
    print(f"manifests {n:>7} objects {os.path.getsize(path) / 2**20:7.2f} MiB  yaml.load_all {base:6.2f} s | "
          f"audit {audit:6.2f} s ({audit / base:4.2f}x)  {len(findings)} findings", flush=True)


def stack_row(n: int, directory: str) -> None:
    path = os.path.join(directory, f"stack-{n}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(many_workloads(n))

    def baseline() -> None:
        with open(path, encoding="utf-8") as fh:
            yaml.load(fh, Loader=LOADER)
    base = timed(baseline)
    plan = timed(lambda: plan_stack(path))
    audit = timed(lambda: audit_files([path], now=NOW))
    print(f"stack     {n:>7} workloads {os.path.getsize(path) / 2**20:5.2f} MiB  yaml.load {base:6.2f} s | "
          f"plan {plan:6.2f} s | audit {audit:6.2f} s ({audit / base:4.1f}x yaml.load, {audit / plan:4.1f}x plan)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="manifest object counts, comma-separated")
    parser.add_argument("--workloads", type=int, default=5000, help="workloads of the generated stack (0: skip)")
    args = parser.parse_args()
    print(f"baseline loader: yaml.{LOADER.__name__}")
    with tempfile.TemporaryDirectory() as directory:
        manifests_row(10, directory)   # warm-up: imports and caches are not what is measured
        for n in (int(s) for s in args.sizes.split(",") if s):
            manifests_row(n, directory)
        if args.workloads:
            stack_row(args.workloads, directory)


if __name__ == "__main__":
    main()
