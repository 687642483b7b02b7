"""Start-up cost of the CLI against a bare interpreter (issue: at most +0.15 s for --help and a small plan).

Prints the median of N runs of each command and the difference to `python3 -c pass`.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
BUDGET = 0.15


def median_seconds(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    base = median_seconds([sys.executable, "-c", "pass"])
    print(f"{'command':40} {'median s':>9} {'over bare':>10} {'ratio':>6}")
    print(f"{'python3 -c pass (baseline)':40} {base:9.3f} {0:10.3f} {1:6.2f}")
    worst = 0.0
    for label, args in [("hybridorch --help", ["--help"]),
                        ("hybridorch plan examples/shop.yaml", ["plan", "examples/shop.yaml"]),
                        ("hybridorch plan -o json legacy-windows", ["plan", "-o", "json",
                                                                    "examples/legacy-windows.yaml"])]:
        t = median_seconds([sys.executable, "-m", "hybridorch", *args])
        worst = max(worst, t - base)
        print(f"{label:40} {t:9.3f} {t - base:10.3f} {t / base:6.2f}")
    print(f"worst overhead {worst:.3f}s, budget {BUDGET:.2f}s: {'OK' if worst <= BUDGET else 'OVER BUDGET'}")


if __name__ == "__main__":
    main()
