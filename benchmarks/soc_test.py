"""Benchmark: `soc-test` on the example plans, per arch: boot-to-first-result and total time, against booting
the same kernel with no containers (boot to /init, and boot to power-off) as the baseline.

Run: python3 benchmarks/soc_test.py   (needs e2e/setup.d/20-guests.sh to have fetched the guests)
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybridorch.vm import console  # noqa: E402
from hybridorch.vm.boot import run_guest  # noqa: E402
from hybridorch.vm.initramfs import GuestProgram  # noqa: E402
from hybridorch.ops.soc import load_soc_plan, run_soc_tests  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hybridorch-bench-") as tmp:
        os.environ["HYBRIDORCH_STATE_DIR"] = str(Path(tmp) / "state")
        print("soc-test per arch (QEMU TCG, 1 vCPU; baseline = same kernel, no containers):")
        for arch in ("amd64", "arm64"):
            path = str(ROOT / "examples" / f"soc-{arch}.yaml")
            plan = load_soc_plan(path)
            bare = run_guest(arch, GuestProgram("baseline", services=False, network=False),
                             workdir=Path(tmp) / f"bare-{arch}", cpus=plan.cpus, memory_mib=plan.memory_mib,
                             machine=plan.machine)
            bare_boot = next(ln.at for ln in bare.lines if console.is_booted(ln.text))
            (result,) = run_soc_tests([path], None, jobs=1).plans
            first = result.first_result_seconds or float("nan")
            tests = len(result.tests)
            print(f"  {arch}: baseline boot {bare_boot:.2f}s, baseline boot+poweroff {bare.seconds:.2f}s")
            print(f"  {arch}: plan boot {result.boot_seconds or 0:.2f}s, first result {first:.2f}s "
                  f"({first / bare_boot:.2f}x baseline boot), total {result.total_seconds:.2f}s for {tests} tests "
                  f"({result.total_seconds / bare.seconds:.2f}x baseline run, "
                  f"{(result.total_seconds - bare.seconds) / tests:.2f}s per test)")


if __name__ == "__main__":
    main()
