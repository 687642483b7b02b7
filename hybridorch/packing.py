"""Packing: put every replica (with its VM/sandbox overhead) onto as few hosts as possible.

Pure and deterministic. Best-fit decreasing over the host pools each placement may use, honouring the
profile's headroom, tenant separation and replica spreading; reports hosts used against a lower bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import PolicyError
from .policy import Placement, Profile
from .spec import HostPool


@dataclass(frozen=True)
class Item:
    workload: str
    replica: int
    tenant: str
    runtime: str
    cpu_millis: int
    memory_bytes: int
    pools: tuple[str, ...]


@dataclass
class Host:
    pool: str
    index: int
    cpu_capacity: int
    memory_capacity: int
    items: list[Item] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.pool}-{self.index}"

    @property
    def cpu_used(self) -> int:
        return sum(i.cpu_millis for i in self.items)

    @property
    def memory_used(self) -> int:
        return sum(i.memory_bytes for i in self.items)

    def fits(self, item: Item, profile: Profile) -> bool:
        if self.cpu_used + item.cpu_millis > self.cpu_capacity:
            return False
        if self.memory_used + item.memory_bytes > self.memory_capacity:
            return False
        if profile.separate_tenants and any(i.tenant != item.tenant for i in self.items):
            return False
        if profile.spread_replicas and any(i.workload == item.workload for i in self.items):
            return False
        return True


@dataclass(frozen=True)
class Packing:
    hosts: tuple[Host, ...]
    lower_bound: int

    @property
    def hosts_used(self) -> int:
        return len(self.hosts)

    def utilisation(self) -> tuple[float, float]:
        """Fraction of the used hosts' (headroom-reduced) CPU and memory that is allocated."""
        cap_cpu = sum(h.cpu_capacity for h in self.hosts) or 1
        cap_mem = sum(h.memory_capacity for h in self.hosts) or 1
        return (sum(h.cpu_used for h in self.hosts) / cap_cpu, sum(h.memory_used for h in self.hosts) / cap_mem)

    def host_of(self, workload: str) -> list[str]:
        return [h.name for h in self.hosts for i in h.items if i.workload == workload]

    def to_dict(self) -> dict[str, Any]:
        cpu, mem = self.utilisation()
        return {
            "hostsUsed": self.hosts_used, "lowerBound": self.lower_bound,
            "utilisation": {"cpu": round(cpu, 4), "memory": round(mem, 4)},
            "hosts": [{"name": h.name, "pool": h.pool, "cpuMillis": h.cpu_used, "cpuCapacity": h.cpu_capacity,
                       "memoryBytes": h.memory_used, "memoryCapacity": h.memory_capacity,
                       "replicas": [f"{i.workload}/{i.replica}" for i in h.items]} for h in self.hosts],
        }


def _capacity(pool: HostPool, profile: Profile) -> tuple[int, int]:
    keep = (100 - profile.headroom_percent) / 100
    return int(pool.cpu_millis * keep), int(pool.memory_bytes * keep)


def items_of(placements: Sequence[Placement]) -> list[Item]:
    return [Item(p.name, r, p.workload.tenant, p.runtime, p.cpu_millis, p.memory_bytes, p.pools)
            for p in placements for r in range(p.workload.replicas)]


def pack(placements: Sequence[Placement], pools: Sequence[HostPool], profile: Profile) -> Packing:
    """Best-fit decreasing. Raises PolicyError when a replica fits on no host or a pool runs out of hosts."""
    by_name = {p.name: p for p in pools}
    items = items_of(placements)
    caps = {p.name: _capacity(p, profile) for p in pools}

    def size(item: Item) -> float:
        cpu_cap, mem_cap = caps[item.pools[0]]
        return max(item.cpu_millis / cpu_cap, item.memory_bytes / mem_cap)

    # largest first; ties broken by name so the result never depends on input order accidents
    items.sort(key=lambda i: (-size(i), i.workload, i.replica))
    hosts: list[Host] = []
    opened: dict[str, int] = {p.name: 0 for p in pools}
    for item in items:
        candidates = [h for h in hosts if h.pool in item.pools and h.fits(item, profile)]
        if candidates:
            # best fit: the host left fullest (by its scarcer resource) after adding the item
            best = min(candidates, key=lambda h: (min((h.cpu_capacity - h.cpu_used - item.cpu_millis) / h.cpu_capacity,
                                                      (h.memory_capacity - h.memory_used - item.memory_bytes)
                                                      / h.memory_capacity), h.pool, h.index))
            best.items.append(item)
            continue
        for pool_name in item.pools:
            pool = by_name[pool_name]
            cpu_cap, mem_cap = caps[pool_name]
            if item.cpu_millis > cpu_cap or item.memory_bytes > mem_cap:
                continue
            if opened[pool_name] >= pool.count:
                continue
            host = Host(pool_name, opened[pool_name], cpu_cap, mem_cap, [item])
            opened[pool_name] += 1
            hosts.append(host)
            break
        else:
            fits_anywhere = any(item.cpu_millis <= caps[n][0] and item.memory_bytes <= caps[n][1] for n in item.pools)
            if not fits_anywhere:
                raise PolicyError(
                    f"workload {item.workload}: one replica needs {item.cpu_millis}m CPU and "
                    f"{item.memory_bytes // 2**20}Mi (overhead included), more than a host of pool(s) "
                    f"{', '.join(item.pools)} offers after {profile.headroom_percent}% headroom")
            raise PolicyError(f"workload {item.workload}: pool(s) {', '.join(item.pools)} ran out of hosts "
                              f"(raise count, or lower replicas/resources)")
    hosts.sort(key=lambda h: (h.pool, h.index))
    return Packing(tuple(hosts), lower_bound(items, pools, profile))


def lower_bound(items: Sequence[Item], pools: Sequence[HostPool], profile: Profile) -> int:
    """A bound no packing can beat: capacity, spread and tenant constraints, per group of disjoint pools."""
    if not items:
        return 0
    caps = {p.name: _capacity(p, profile) for p in pools}
    groups: dict[frozenset[str], list[Item]] = {}
    for item in items:
        groups.setdefault(frozenset(item.pools), []).append(item)
    keys = list(groups)
    disjoint = all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    parts = list(groups.values()) if disjoint else [list(items)]

    def bound(part: list[Item]) -> int:
        names = {n for i in part for n in i.pools}
        cpu = max(caps[n][0] for n in names)
        mem = max(caps[n][1] for n in names)
        b = max(math.ceil(sum(i.cpu_millis for i in part) / cpu), math.ceil(sum(i.memory_bytes for i in part) / mem))
        if profile.spread_replicas:
            b = max(b, max(sum(1 for i in part if i.workload == w) for w in {i.workload for i in part}))
        return b

    def tenant_bound(part: list[Item]) -> int:
        # tenants never share a host: each tenant's bound adds up
        if not profile.separate_tenants:
            return bound(part)
        return sum(bound([i for i in part if i.tenant == t]) for t in {i.tenant for i in part})

    return sum(tenant_bound(p) for p in parts)
