"""Benchmark: `soc-test` locally against `--target kubernetes` (each board a Job on the cluster of KUBECONFIG), for
1, 2 and 4 boards of the example plans (soc-arm64, then soc-amd64, then renamed copies of both) on the same
machine, and where the cluster's time goes (images built and loaded, pod pending and start, guest boot, tests).
The baseline is the local path; the target for one board is a cluster overhead under 1.3x. Each count runs
both targets and checks that they give the same verdicts. A last line measures a board with two quick tests,
where the cluster's fixed cost weighs most.

Run: KUBECONFIG=... python3 benchmarks/soc_cluster.py [--counts 1,2,4]
(the e2e two-worker kind cluster: HYBRIDORCH_KIND_CLUSTER=hybridorch-soc bash e2e/cluster.sh up --provider kind
--workers 2)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybridorch.ops.soc import SocReport, run_soc_tests  # noqa: E402

QUICK = """apiVersion: hybridorch.dev/v1alpha1
kind: SocTest
metadata:
  name: bench-quick
spec:
  target: {arch: amd64, machine: q35, memory: 256Mi, cpus: 1, timeout: 300}
  containers:
    - {name: runs-on-x86-64, image: busybox, command: [uname, -m], expect: {output: "^x86_64$"}, timeout: 30}
    - {name: own-cgroup, image: busybox, command: [cat, /proc/self/cgroup], expect: {output: "^0::/"}, timeout: 30}
"""


def plans(tmp: Path, n: int) -> list[str]:
    """The example boards, alternating arches; copies beyond the two examples get their own names."""
    out = []
    for i in range(n):
        arch = ("arm64", "amd64")[i % 2]
        text = (ROOT / "examples" / f"soc-{arch}.yaml").read_text()
        if i >= 2:
            text = text.replace(f"name: soc-{arch}", f"name: soc-{arch}-copy{i}")
        path = tmp / f"board-{i}.yaml"
        path.write_text(text)
        out.append(str(path))
    return out


def verdicts(report: SocReport) -> list[tuple[str, str, str]]:
    return [(p.plan, t.name, t.outcome) for p in report.plans for t in p.tests]


def timed(paths: list[str], target: str) -> tuple[float, SocReport]:
    started = time.monotonic()
    report = run_soc_tests(paths, None, len(paths), target=target)
    seconds = time.monotonic() - started
    broken = [f"{p.plan}: {p.error}" for p in report.plans if p.error]
    if broken:
        raise SystemExit(f"{target}: boards did not run: {broken}")
    return seconds, report


def phases(report: SocReport) -> str:
    keys = ("images", "load", "pending", "start", "boot", "tests")
    first = report.plans[0].phases
    return ", ".join(f"{k} {first[k]:.1f}s" for k in keys if k in first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1,2,4")
    counts = [int(x) for x in parser.parse_args().counts.split(",")]
    if not os.environ.get("KUBECONFIG"):
        raise SystemExit("set KUBECONFIG to the kind cluster to measure")
    with tempfile.TemporaryDirectory(prefix="hybridorch-bench-") as tmp:
        os.environ.setdefault("HYBRIDORCH_STATE_DIR", str(Path(tmp) / "state"))
        cold, report = timed(plans(Path(tmp), 1), "kubernetes")
        print(f"cluster, 1 board, first run (builds and loads what is missing): {cold:.1f}s ({phases(report)})")
        print("boards  local     cluster   ratio   same verdicts  cluster phases of the first board; nodes")
        for n in counts:
            paths = plans(Path(tmp), n)
            local, here = timed(paths, "local")
            cluster, there = timed(paths, "kubernetes")
            nodes = sorted({p.node for p in there.plans})
            print(f"{n:>6}  {local:7.1f}s  {cluster:7.1f}s  {cluster / local:5.2f}x  "
                  f"{str(verdicts(here) == verdicts(there)):<13}  {phases(there)}; {', '.join(nodes)}")
        quick = Path(tmp) / "quick.yaml"
        quick.write_text(QUICK)
        local, _ = timed([str(quick)], "local")
        cluster, there = timed([str(quick)], "kubernetes")
        print(f"quick board (2 tests, no failure): local {local:.1f}s, cluster {cluster:.1f}s, "
              f"{cluster / local:.2f}x ({phases(there)})")


if __name__ == "__main__":
    main()
