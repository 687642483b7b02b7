"""Packing quality and speed (issue 13, and issue 10's "linear time" for packing). Prints ratios, asserts nothing.

1. Generated stacks of 100, 1,000 and 10,000 workloads on heterogeneous host classes: hosts used over the lower
   bound (target <= 1.03; "optimal" where it is proven) and wall time, for best-fit decreasing alone, for the
   default packing (2 s solver budget) and for the naive baseline, first fit in spec order.
2. Small tight instances (4 CPU / 8Gi hosts, 20-38 replicas; some with spread replicas): against the exact
   optimum that CP-SAT proves with a long budget.
3. Issue 10's 600-byte stack: ten workloads of 1,000 replicas on a 10,000-host pool (target: well under 1 s).

    python3 benchmarks/packing.py [--quick]
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybridorch.core.packing import _capacity, items_of, pack  # noqa: E402
from hybridorch.core.policy import PROFILES, Placement, Profile, place_workload  # noqa: E402
from hybridorch.core.runtime import Runtime  # noqa: E402
from hybridorch.core.spec import HostPool, Resources, Workload  # noqa: E402

CLASSES = (HostPool("c64", cpu="64", memory="256Gi", count=10000),
           HostPool("c32", cpu="32", memory="128Gi", count=10000),
           HostPool("m16", cpu="16", memory="128Gi", count=10000),     # memory-heavy class
           HostPool("arm32", arch="arm64", cpu="32", memory="64Gi", count=10000))


def workload_size(rng: random.Random) -> tuple[int, int]:
    """CPU millis and memory MiB of one generated workload: mostly small services, some large, some memory-heavy."""
    kind = rng.random()
    if kind < 0.6:
        return rng.choice([100, 250, 500, 750, 1000]), rng.choice([128, 256, 512, 1024, 2048])
    if kind < 0.85:
        return rng.choice([1000, 2000, 3000, 4000]), rng.choice([2048, 4096, 8192])
    return rng.choice([500, 1000, 2000]), rng.choice([8192, 16384, 24576])


def generated(n: int, seed: int, profile: Profile) -> list[Placement]:
    """n workloads: mostly small services, some large and memory-heavy ones, a fifth on arm64, a few VMs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cpu, mem = workload_size(rng)
        w = Workload(name=f"w{i}", image="x", trust=rng.choice(["trusted", "internal"]),
                     resources=Resources(f"{cpu}m", f"{mem}Mi"), replicas=rng.choice([1, 1, 2, 2, 3, 4]),
                     tenant=f"t{rng.randint(0, 9)}", arch="arm64" if rng.random() < 0.2 else "amd64",
                     runtime=Runtime.VM if rng.random() < 0.1 else None)  # None: auto
        out.append(place_workload(w, profile, CLASSES))
    return out


def first_fit(placements: list[Placement], pools: tuple[HostPool, ...], profile: Profile) -> int:
    """The naive baseline: replicas in spec order, each on the first open host it fits (else a new host)."""
    caps = {p.name: _capacity(p, profile) for p in pools}
    hosts: list[list] = []  # [pool, cpu left, mem left, workloads, tenant]
    for item in items_of(placements):
        for h in hosts:
            if (h[0] in item.pools and h[1] >= item.cpu_millis and h[2] >= item.memory_bytes
                    and not (profile.spread_replicas and item.workload in h[3])
                    and not (profile.separate_tenants and h[4] != item.tenant)):
                h[1] -= item.cpu_millis
                h[2] -= item.memory_bytes
                h[3].add(item.workload)
                break
        else:
            pool = next(p for p in item.pools
                        if caps[p][0] >= item.cpu_millis and caps[p][1] >= item.memory_bytes)
            hosts.append([pool, caps[pool][0] - item.cpu_millis, caps[pool][1] - item.memory_bytes,
                          {item.workload}, item.tenant])
    return len(hosts)


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def large(sizes: list[int]) -> None:
    print("1. generated stacks, heterogeneous host classes (c64, c32, m16 memory-heavy, arm32), policy balanced")
    print(f"{'workloads':>9} {'replicas':>8} {'bound':>6} | {'BFD':>6} {'/bound':>6} {'s':>6} | "
          f"{'default':>7} {'/bound':>6} {'s':>6} {'how':<28} | {'first-fit':>9} {'/bound':>6} {'s':>6}")
    profile = PROFILES["balanced"]
    for n in sizes:
        ps = generated(n, seed=n, profile=profile)
        bfd, t_bfd = timed(lambda: pack(ps, CLASSES, profile, solver_budget=0))
        full, t_full = timed(lambda: pack(ps, CLASSES, profile))
        ff, t_ff = timed(lambda: first_fit(ps, CLASSES, profile)) if n <= 1000 else (None, 0.0)
        bound = full.lower_bound
        how = full.method + (" (optimal)" if full.optimal else "")
        ff_text = f"{ff:>9} {ff / bound:6.3f} {t_ff:6.2f}" if ff else f"{'skipped':>9} {'':>6} {'':>6}"
        print(f"{n:>9} {len(items_of(ps)):>8} {bound:>6} | {bfd.hosts_used:>6} {bfd.hosts_used / bound:6.3f} "
              f"{t_bfd:6.2f} | {full.hosts_used:>7} {full.hosts_used / bound:6.3f} {t_full:6.2f} {how:<28} | {ff_text}")
    print("   target: default/bound <= 1.03; first fit in spec order is the naive baseline (skipped above 1,000:"
          " quadratic)\n")


def tight(count: int, spread: bool, seed: int):
    """The issue's hard case: 4 CPU / 8Gi hosts, 20-38 replicas mixing CPU-heavy and memory-heavy workloads."""
    rng = random.Random(seed)
    pools = (HostPool("t", cpu="4", memory="8Gi", count=40),)
    profile = PROFILES["balanced" if spread else "efficient"]
    out, total, i = [], rng.randint(20, 38), 0
    while total > 0:
        replicas = min(total, rng.randint(1, 4))
        w = Workload(name=f"w{i}", image="x", trust="trusted", replicas=replicas,
                     resources=Resources(rng.choice(["100m", "250m", "500m", "1", "1500m", "2", "3"]),
                                         rng.choice(["512Mi", "1Gi", "2Gi", "3Gi", "4Gi"])))
        out.append(place_workload(w, profile, pools))
        total, i = total - replicas, i + 1
    return out, pools, profile


def small(instances: int) -> None:
    print("2. tight hosts (4 CPU / 8Gi, 20-38 replicas) against the optimum CP-SAT proves with a 60 s budget")
    print(f"{'case':>10} {'replicas':>8} {'optimum':>7} | {'BFD':>4} {'ratio':>5} | {'default':>7} {'ratio':>5} "
          f"{'s':>5} | {'first-fit':>9} {'ratio':>5}")
    rows = []
    for spread in (False, True):
        for seed in range(instances if not spread else max(3, instances // 3)):
            ps, pools, profile = tight(0, spread, seed)
            opt = pack(ps, pools, profile, solver_budget=60)
            if not opt.optimal:
                print(f"{'':>10} seed {seed}: optimum not proven in 60 s, skipped")
                continue
            bfd = pack(ps, pools, profile, solver_budget=0)
            full, t = timed(lambda: pack(ps, pools, profile))
            ff = first_fit(ps, pools, profile)
            o = opt.hosts_used
            rows.append((spread, bfd.hosts_used / o, full.hosts_used / o, ff / o, bfd.lower_bound <= o))
            print(f"{('spread ' if spread else '') + str(seed):>10} {len(items_of(ps)):>8} {o:>7} | "
                  f"{bfd.hosts_used:>4} {bfd.hosts_used / o:5.2f} | {full.hosts_used:>7} {full.hosts_used / o:5.2f} "
                  f"{t:5.2f} | {ff:>9} {ff / o:5.2f}")
    for spread in (False, True):
        sel = [r for r in rows if r[0] == spread]
        if sel:
            label = "spread replicas" if spread else "no spread"
            print(f"   {label}: best fit {sum(r[1] for r in sel) / len(sel):.3f}x the optimum (optimal in "
                  f"{sum(r[1] == 1 for r in sel)} of {len(sel)}), default {sum(r[2] for r in sel) / len(sel):.3f}x "
                  f"(optimal in {sum(r[2] == 1 for r in sel)}), first fit {sum(r[3] for r in sel) / len(sel):.3f}x; "
                  f"bound <= optimum in {sum(r[4] for r in sel)} of {len(sel)}")
    print()


def six_hundred_bytes() -> None:
    pools = (HostPool("p", cpu="32", memory="128Gi", count=10000),)
    ws = [Workload(name=f"w{i}", image="x", resources=Resources("500m", "1Gi"), replicas=1000, trust="trusted")
          for i in range(10)]
    ps = [place_workload(w, PROFILES["balanced"], pools) for w in ws]
    result, t = timed(lambda: pack(ps, pools, PROFILES["balanced"]))
    print(f"3. issue 10's 600-byte stack (10 x 1,000 spread replicas, 10,000-host pool): {t:.3f} s "
          f"(target < 1 s: {t:.2f}x of it), {result.hosts_used} hosts, bound {result.lower_bound}")


def main() -> None:
    quick = "--quick" in sys.argv
    large([100, 1000] if quick else [100, 1000, 10000])
    small(4 if quick else 10)
    six_hundred_bytes()


if __name__ == "__main__":
    main()
