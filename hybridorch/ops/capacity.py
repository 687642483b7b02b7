"""Consolidation: what packing is worth. The one-workload-per-server baseline next to the packed plan: servers,
utilisation, energy per year and CO2 under a linear idle-to-peak power model, and what did not fit and why.

Pure: a Plan and the assumptions in, figures out (the CLI prints or plots them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybridorch.errors import PolicyError
from hybridorch.core.labels import replica_name, replica_ref
from hybridorch.core.packing import Unplaced
from hybridorch.core.plan import Plan
from hybridorch.core.spec import HostPool

HOURS_PER_YEAR = 8760


@dataclass(frozen=True)
class Assumptions:
    """Figures the report cannot know; each is printed with the report."""

    pue: float = 1.5                  # facility power / IT power; a typical enterprise data centre
    grid_g_per_kwh: float = 400.0     # gCO2 per kWh of the electricity used
    idle_watts: int = 100             # for host pools that do not give idleWatts/peakWatts: a 2-socket 1U server
    peak_watts: int = 300

    def power(self, pool: HostPool) -> tuple[int, int]:
        idle = self.idle_watts if pool.idleWatts is None else pool.idleWatts
        peak = self.peak_watts if pool.peakWatts is None else pool.peakWatts
        if idle > peak:
            raise PolicyError(f"host pool {pool.name}: idleWatts {idle} is above peakWatts {peak}")
        return idle, peak


@dataclass(frozen=True)
class Server:
    name: str
    pool: str
    cpu_millis: int          # allocated (requests, overhead included on the packed side)
    cpu_capacity: int        # the whole machine, headroom not deducted: that is what draws power
    memory_bytes: int
    memory_capacity: int
    watts: float
    replicas: tuple[str, ...]

    @property
    def cpu_utilisation(self) -> float:
        return self.cpu_millis / self.cpu_capacity if self.cpu_capacity else 0.0

    @property
    def memory_utilisation(self) -> float:
        return self.memory_bytes / self.memory_capacity if self.memory_capacity else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pool": self.pool, "cpuMillis": self.cpu_millis, "cpuCapacity": self.cpu_capacity,
                "memoryBytes": self.memory_bytes, "memoryCapacity": self.memory_capacity,
                "cpuUtilisation": round(self.cpu_utilisation, 4),
                "memoryUtilisation": round(self.memory_utilisation, 4), "watts": round(self.watts, 1),
                "replicas": list(self.replicas)}


@dataclass(frozen=True)
class Side:
    """One picture of the estate: the baseline or the packed plan."""

    label: str
    servers: tuple[Server, ...]
    pue: float
    grid_g_per_kwh: float

    @property
    def count(self) -> int:
        return len(self.servers)

    @property
    def cpu_utilisation(self) -> float:
        cap = sum(s.cpu_capacity for s in self.servers)
        return sum(s.cpu_millis for s in self.servers) / cap if cap else 0.0

    @property
    def memory_utilisation(self) -> float:
        cap = sum(s.memory_capacity for s in self.servers)
        return sum(s.memory_bytes for s in self.servers) / cap if cap else 0.0

    @property
    def it_watts(self) -> float:
        return sum(s.watts for s in self.servers)

    @property
    def kwh_per_year(self) -> float:
        """Facility energy: IT power around the clock, times PUE."""
        return self.it_watts * HOURS_PER_YEAR / 1000 * self.pue

    @property
    def co2_kg_per_year(self) -> float:
        return self.kwh_per_year * self.grid_g_per_kwh / 1000

    def to_dict(self) -> dict[str, Any]:
        return {"servers": self.count, "cpuUtilisation": round(self.cpu_utilisation, 4),
                "memoryUtilisation": round(self.memory_utilisation, 4), "itWatts": round(self.it_watts, 1),
                "kwhPerYear": round(self.kwh_per_year, 1), "co2KgPerYear": round(self.co2_kg_per_year, 1),
                "hosts": [s.to_dict() for s in self.servers]}


@dataclass(frozen=True)
class CapacityReport:
    stack: str
    policy: str
    assumptions: Assumptions
    default_power_pools: tuple[str, ...]   # pools whose power figures are the assumed defaults
    baseline: Side
    packed: Side
    unfit: tuple[Unplaced, ...]   # the packing's own record of replicas that got no host
    plan: Plan

    def saved(self) -> dict[str, float]:
        b, p = self.baseline, self.packed

        def share(x: float, y: float) -> float:
            return round((x - y) / x, 4) if x else 0.0

        return {"servers": b.count - p.count, "serversFraction": share(b.count, p.count),
                "kwhPerYear": round(b.kwh_per_year - p.kwh_per_year, 1),
                "energyFraction": share(b.kwh_per_year, p.kwh_per_year),
                "co2KgPerYear": round(b.co2_kg_per_year - p.co2_kg_per_year, 1)}

    def assumption_lines(self) -> list[str]:
        a = self.assumptions
        lines = [f"power: linear from idle to peak watts by allocated CPU share, around the clock "
                 f"({HOURS_PER_YEAR} h/year)",
                 f"PUE {a.pue:g} (--pue), grid {a.grid_g_per_kwh:g} gCO2/kWh (--grid-intensity)",
                 "baseline: every replica alone on a server of the lowest-power class that fits it "
                 "(its own resources, no VM overhead, pool counts not applied)"]
        if self.default_power_pools:
            lines.append(f"pools {', '.join(self.default_power_pools)}: no idleWatts/peakWatts given, assumed "
                         f"{a.idle_watts} W idle / {a.peak_watts} W peak (--idle-watts/--peak-watts)")
        return lines

    def to_dict(self) -> dict[str, Any]:
        a = self.assumptions
        return {
            "stack": self.stack, "policy": self.policy,
            "assumptions": {"pue": a.pue, "gridGramsCo2PerKwh": a.grid_g_per_kwh, "defaultIdleWatts": a.idle_watts,
                            "defaultPeakWatts": a.peak_watts, "hoursPerYear": HOURS_PER_YEAR,
                            "poolsWithDefaultPower": list(self.default_power_pools),
                            "notes": self.assumption_lines()},
            "baseline": self.baseline.to_dict(), "packed": self.packed.to_dict(), "saved": self.saved(),
            "unfit": [{"workload": u.workload, "replicas": u.replicas, "reason": u.reason} for u in self.unfit],
            "packing": {k: v for k, v in self.plan.packing.to_dict().items() if k not in ("hosts", "unplaced")},
        }


def _watts(idle: int, peak: int, cpu_share: float) -> float:
    return idle + (peak - idle) * min(1.0, cpu_share)


def capacity_report(plan: Plan, assumptions: Assumptions = Assumptions()) -> CapacityReport:
    """The baseline and the packed plan side by side (plan packed with strict=False, so unfit replicas are listed)."""
    pools = {p.name: p for p in plan.stack.hosts}
    power = {name: assumptions.power(p) for name, p in pools.items()}
    packing = plan.packing
    short = {u.workload: u.replicas for u in packing.unplaced}

    baseline: list[Server] = []
    for pl in plan.placements:
        cpu, mem = pl.workload.resources.cpu_millis, pl.workload.resources.memory_bytes
        fitting = [pools[n] for n in pl.pools if cpu <= pools[n].cpu_millis and mem <= pools[n].memory_bytes]
        replicas = pl.workload.replicas - short.get(pl.name, 0)
        if not fitting:
            continue  # listed as unfit by the packing already (it does not fit even with the host to itself)
        # the cheapest server that can run it alone: lowest power, then smallest
        pool = min(fitting, key=lambda p: (sum(power[p.name]), p.cpu_millis, p.memory_bytes, pl.pools.index(p.name)))
        idle, peak = power[pool.name]
        for r in range(replicas):
            baseline.append(Server(replica_name(pl.name, r), pool.name, cpu, pool.cpu_millis, mem, pool.memory_bytes,
                                   _watts(idle, peak, cpu / pool.cpu_millis), (replica_ref(pl.name, r),)))
    packed: list[Server] = []
    for h in packing.hosts:
        pool = pools[h.pool]
        idle, peak = power[h.pool]
        packed.append(Server(h.name, h.pool, h.cpu_used, pool.cpu_millis, h.memory_used, pool.memory_bytes,
                             _watts(idle, peak, h.cpu_used / pool.cpu_millis),
                             tuple(replica_ref(i.workload, i.replica) for i in h.items)))
    used_pools = {s.pool for s in baseline} | {s.pool for s in packed}
    defaulted = tuple(n for n, p in pools.items() if n in used_pools and (p.idleWatts is None or p.peakWatts is None))
    return CapacityReport(plan.stack.name, plan.profile.name, assumptions, defaulted,
                          Side("one workload per server", tuple(baseline), assumptions.pue, assumptions.grid_g_per_kwh),
                          Side("packed", tuple(packed), assumptions.pue, assumptions.grid_g_per_kwh),
                          packing.unplaced, plan)
