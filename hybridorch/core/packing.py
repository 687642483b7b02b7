"""Packing: put every replica (with its VM/sandbox overhead) onto as few hosts as possible.

Pure and deterministic. Best-fit decreasing (indexed, so near-linear) is the first answer. Within a solver
budget it is then improved: greedy variants and emptying the least-loaded hosts on any instance, and an exact
OR-Tools CP-SAT model on small and medium ones. The lower bound accounts for pool eligibility, spread replicas,
tenants kept apart and items that cannot share a host, so the printed gap is honest.
"""
from __future__ import annotations

import math
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from hybridorch.errors import PolicyError
from hybridorch.core.labels import replica_ref
from hybridorch.core.policy import Placement, Profile
from hybridorch.core.spec import HostPool

DEFAULT_SOLVER_BUDGET = 2.0   # seconds (CP-SAT deterministic time, and the improvement's work allowance)
EXACT_MAX_VARIABLES = 30_000  # larger models are improved heuristically instead of solved exactly
_SCAN = 256                   # open hosts examined per best-fit query before a new host is opened
_NEAR = 16                    # feasible hosts compared per query, from each resource's ordering
_OPS_PER_SECOND = 5_000_000   # improvement work units per budget second (deterministic, unlike a clock)
_GREEDY_OP_COST = 3           # one host examined by best fit, in those units (measured: about 0.5 us)
_FILL_OP_COST = 2             # one replica type looked at by the host-at-a-time fill (measured: about 0.4 us)


@dataclass(frozen=True)
class Item:
    """One replica, sized with its overhead."""

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
    cpu_capacity: int      # after headroom
    memory_capacity: int
    items: list[Item] = field(default_factory=list)
    cpu_used: int = 0
    memory_used: int = 0

    @property
    def name(self) -> str:
        return f"{self.pool}-{self.index}"

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.cpu_used += item.cpu_millis
        self.memory_used += item.memory_bytes


@dataclass(frozen=True)
class Unplaced:
    """Replicas that got no host, and why."""

    workload: str
    replicas: int
    reason: str


@dataclass(frozen=True)
class Packing:
    hosts: tuple[Host, ...]
    lower_bound: int
    greedy_hosts: int = 0                 # what best-fit decreasing alone used
    method: str = "best-fit decreasing"   # which step produced the hosts
    optimal: bool = False                 # proven: equal to the lower bound, or CP-SAT proved it
    unplaced: tuple[Unplaced, ...] = ()

    @property
    def hosts_used(self) -> int:
        return len(self.hosts)

    @property
    def gap(self) -> float:
        """Hosts used over the lower bound, minus one (0.0 is optimal)."""
        return self.hosts_used / self.lower_bound - 1 if self.lower_bound else 0.0

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
            "hostsUsed": self.hosts_used, "lowerBound": self.lower_bound, "gap": round(self.gap, 4),
            "optimal": self.optimal, "method": self.method, "greedyHosts": self.greedy_hosts,
            "utilisation": {"cpu": round(cpu, 4), "memory": round(mem, 4)},
            "hosts": [{"name": h.name, "pool": h.pool, "cpuMillis": h.cpu_used, "cpuCapacity": h.cpu_capacity,
                       "memoryBytes": h.memory_used, "memoryCapacity": h.memory_capacity,
                       "replicas": [replica_ref(i.workload, i.replica) for i in h.items]} for h in self.hosts],
            "unplaced": [{"workload": u.workload, "replicas": u.replicas, "reason": u.reason} for u in self.unplaced],
        }


def _capacity(pool: HostPool, profile: Profile) -> tuple[int, int]:
    keep = (100 - profile.headroom_percent) / 100
    return int(pool.cpu_millis * keep), int(pool.memory_bytes * keep)


def items_of(placements: Sequence[Placement]) -> list[Item]:
    return [Item(p.name, r, p.workload.tenant, p.runtime, p.cpu_millis, p.memory_bytes, p.pools)
            for p in placements for r in range(p.workload.replicas)]


# --- the instance: identical replicas are one group -----------------------------------------------------

@dataclass(frozen=True)
class _Group:
    workload: str
    tenant: str
    runtime: str
    cpu: int
    mem: int
    pools: tuple[str, ...]
    count: int
    # pool -> its place in `pools`: membership and preference in O(1), shared by every group with the same
    # pools tuple (a stack of thousands of pools made each `in pools` a scan)
    rank: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)


def _groups(items: Iterable[Item]) -> list[_Group]:
    found: dict[str, _Group] = {}
    ranks: dict[int, tuple[tuple[str, ...], dict[str, int]]] = {}
    for i in items:
        g = found.get(i.workload)
        if g is not None:
            found[i.workload] = _Group(g.workload, g.tenant, g.runtime, g.cpu, g.mem, g.pools, g.count + 1, g.rank)
            continue
        known = ranks.get(id(i.pools))
        if known is None or known[0] is not i.pools:
            known = ranks[id(i.pools)] = (i.pools, {p: k for k, p in enumerate(i.pools)})
        found[i.workload] = _Group(i.workload, i.tenant, i.runtime, i.cpu_millis, i.memory_bytes, i.pools, 1, known[1])
    return list(found.values())


@dataclass(frozen=True)
class _Instance:
    groups: tuple[_Group, ...]
    caps: dict[str, tuple[int, int]]     # per pool, after headroom
    counts: dict[str, int]               # hosts per pool
    order: tuple[str, ...]               # pool names in spec order
    spread: bool
    separate: bool

    def fits(self, g: _Group, pool: str) -> bool:
        c, m = self.caps[pool]
        return g.cpu <= c and g.mem <= m

    def per_host(self, g: _Group, pool: str) -> int:
        """How many replicas of g one empty host of pool holds."""
        if self.spread:
            return 1
        c, m = self.caps[pool]
        return min(g.count, c // g.cpu if g.cpu else g.count, m // g.mem if g.mem else g.count)


def _instance(items: Iterable[Item], pools: Sequence[HostPool], profile: Profile) -> _Instance:
    return _Instance(tuple(_groups(items)), {p.name: _capacity(p, profile) for p in pools},
                     {p.name: p.count for p in pools}, tuple(p.name for p in pools),
                     profile.spread_replicas, profile.separate_tenants)


class _Bin:
    """A host being filled: remaining capacity and replica counts per workload, kept incrementally."""

    __slots__ = ("pool", "index", "cap_c", "cap_m", "rem_c", "rem_m", "tenant", "seq", "counts")

    def __init__(self, pool: str, index: int, cap: tuple[int, int], tenant: str, seq: int):
        self.pool, self.index, self.seq, self.tenant = pool, index, seq, tenant
        self.cap_c, self.cap_m = cap
        self.rem_c, self.rem_m = cap
        self.counts: dict[str, int] = {}

    def put(self, g: _Group, k: int) -> None:
        self.rem_c -= g.cpu * k
        self.rem_m -= g.mem * k
        self.counts[g.workload] = self.counts.get(g.workload, 0) + k

    def load(self) -> float:
        return max(1 - self.rem_c / self.cap_c if self.cap_c else 1, 1 - self.rem_m / self.cap_m if self.cap_m else 1)


# --- best-fit decreasing, indexed ------------------------------------------------------------------------

class _OpenHosts:
    """Open hosts of one (pool, tenant), sorted by remaining CPU and by remaining memory.

    A query starts at the first host with room in the item's dominant resource (bisect) instead of scanning
    every open host, so packing stays near-linear; hosts with no room for the smallest item leave the index."""

    def __init__(self) -> None:
        self.by_cpu: list[tuple[int, int]] = []
        self.by_mem: list[tuple[int, int]] = []

    def add(self, b: _Bin) -> None:
        insort(self.by_cpu, (b.rem_c, b.seq))
        insort(self.by_mem, (b.rem_m, b.seq))

    def remove(self, b: _Bin) -> None:
        for lst, key in ((self.by_cpu, (b.rem_c, b.seq)), (self.by_mem, (b.rem_m, b.seq))):
            i = bisect_left(lst, key)
            if i < len(lst) and lst[i] == key:
                del lst[i]


def _too_big(g: _Group, inst: _Instance, headroom: int) -> str:
    return (f"one replica needs {g.cpu}m CPU and {g.mem // 2**20}Mi (overhead included), more than a host of "
            f"pool(s) {_pool_list(g.pools)} offers after {headroom}% headroom")


def _out_of_hosts(g: _Group) -> str:
    return f"pool(s) {_pool_list(g.pools)} ran out of hosts (raise count, or lower replicas/resources)"


class _BestFit:
    """One best-fit decreasing run: the hosts opened so far, the open ones indexed per (pool, tenant), and the
    work done (hosts examined)."""

    def __init__(self, inst: _Instance, groups: list[_Group], biggest_pool_first: bool):
        self.inst, self.biggest_pool_first = inst, biggest_pool_first
        self.work = len(groups)
        self.min_c = min(g.cpu for g in groups)
        self.min_m = min(g.mem for g in groups)
        self.opened = {p: 0 for p in inst.order}
        self.bins: list[_Bin] = []
        self.by_seq: dict[int, _Bin] = {}
        self.index: dict[tuple[str, str], _OpenHosts] = {}
        self.indexed: dict[str, list[str]] = {}        # tenant key -> pools with an index, in opening order
        self.orders: dict[tuple[int, bool], tuple[tuple[str, ...], list[str], list[int]]] = {}

    def put(self, b: _Bin, g: _Group, k: int, fresh: bool = False) -> None:
        """Add k replicas of g to b and move b to its new place in the index (or out of it when full)."""
        tkey = b.tenant if self.inst.separate else ""
        idx = self.index.get((b.pool, tkey))
        if idx is None:
            idx = self.index[b.pool, tkey] = _OpenHosts()
            self.indexed.setdefault(tkey, []).append(b.pool)
        if not fresh:
            idx.remove(b)   # a no-op when b had already left the index
        b.put(g, k)
        if b.rem_c >= self.min_c and b.rem_m >= self.min_m:
            idx.add(b)

    def candidates(self, g: _Group, want: int) -> list[tuple[float, float, int, int]]:
        """Up to `want` hosts, best first. A host is better when, after adding the replica, the more plentiful of
        its two resources is the least left over: filling the slack resource keeps CPU and memory balanced, where
        best fit on the scarcer one strands the other (two 100m/4Gi replicas fill a 4-CPU host's memory)."""
        inst, by_seq = self.inst, self.by_seq
        tkey = g.tenant if inst.separate else ""
        found: dict[int, tuple[float, float, int, int]] = {}
        # only pools that have open hosts: with thousands of pools, most have none (same hosts, same work count)
        opened = self.indexed.get(tkey, [])
        pools = ([(g.rank[p], p) for p in opened if p in g.rank] if len(opened) < len(g.pools)
                 else enumerate(g.pools))
        for po, pool in pools:
            idx = self.index.get((pool, tkey))
            if idx is None:
                continue
            cap_c, cap_m = inst.caps[pool]
            for lst, need in ((idx.by_cpu, g.cpu), (idx.by_mem, g.mem)):
                i = bisect_left(lst, (need, -1))
                got = 0
                stop = min(len(lst), i + want + _SCAN)
                while i < stop and got < want + _NEAR:
                    seq = lst[i][1]
                    i += 1
                    self.work += 1
                    b = by_seq[seq]
                    if b.rem_c < g.cpu or b.rem_m < g.mem or (inst.spread and g.workload in b.counts):
                        continue
                    got += 1
                    left_c, left_m = (b.rem_c - g.cpu) / cap_c, (b.rem_m - g.mem) / cap_m
                    found[seq] = (max(left_c, left_m), min(left_c, left_m), po, seq)
        return sorted(found.values())[:want]

    def fill_open(self, g: _Group) -> int:
        """Put g's replicas on open hosts, best fit; returns how many are left for new hosts."""
        left = g.count
        if self.inst.spread:
            # sequential best fit would give each replica the best remaining host: the `left` best hosts at once
            for *_, seq in self.candidates(g, left):
                self.put(self.by_seq[seq], g, 1)
                left -= 1
            return left
        while left:
            best = self.candidates(g, 1)
            if not best:
                break
            b = self.by_seq[best[0][3]]
            # identical replicas: best fit keeps choosing this host while it has room, so fill it in bulk
            k = min(left, b.rem_c // g.cpu if g.cpu else left, b.rem_m // g.mem if g.mem else left)
            self.put(b, g, k)
            left -= k
        return left

    def fill_new(self, g: _Group, left: int) -> int:
        """Open hosts for the `left` replicas of g that found none; returns how many got no host."""
        while left:
            fresh = self.new_bin(g)
            if fresh is None:
                break
            k = min(left, self.inst.per_host(g, fresh.pool))
            self.put(fresh, g, k, fresh=True)
            left -= k
        return left

    def new_bin(self, g: _Group) -> _Bin | None:
        inst = self.inst
        pool = self.first_pool(g)
        if pool is None:
            return None
        b = _Bin(pool, self.opened[pool], inst.caps[pool], g.tenant, len(self.bins))
        self.opened[pool] += 1
        self.bins.append(b)
        self.by_seq[b.seq] = b
        return b

    def first_pool(self, g: _Group) -> str | None:
        """The first pool of g's order (its preference, or the biggest hosts first) with a host left that g fits.
        Pools out of hosts stay so for the run: a start pointer per order skips them, so opening hosts on
        thousands of pools does not rescan them."""
        inst = self.inst
        key = (id(g.pools), self.biggest_pool_first)
        known = self.orders.get(key)
        if known is None or known[0] is not g.pools:
            order = (sorted(g.pools, key=lambda p: (-inst.caps[p][0] * inst.caps[p][1], g.rank[p]))
                     if self.biggest_pool_first else list(g.pools))
            known = self.orders[key] = (g.pools, order, [0])
        _, order, start = known
        while start[0] < len(order) and self.opened[order[start[0]]] >= inst.counts[order[start[0]]]:
            start[0] += 1
        for i in range(start[0], len(order)):
            p = order[i]
            if self.opened[p] < inst.counts[p] and inst.fits(g, p):
                return p
        return None


def _greedy(inst: _Instance, sort_key: Callable[[_Group], Any], biggest_pool_first: bool,
            headroom: int) -> tuple[list[_Bin], list[Unplaced], int]:
    """Best-fit decreasing in the order of sort_key; also returns the work done (hosts examined)."""
    groups = sorted(inst.groups, key=sort_key)
    if not groups:
        return [], [], 0
    run = _BestFit(inst, groups, biggest_pool_first)
    unplaced: list[Unplaced] = []
    for g in groups:
        left = run.fill_new(g, run.fill_open(g))
        if left:
            fits = any(inst.fits(g, p) for p in g.pools)
            unplaced.append(Unplaced(g.workload, left, _out_of_hosts(g) if fits else _too_big(g, inst, headroom)))
    return run.bins, unplaced, run.work


def _sort_keys(inst: _Instance) -> list[Callable[[_Group], Any]]:
    def frac(g: _Group) -> tuple[float, float]:
        c, m = inst.caps[g.pools[0]]
        return g.cpu / c, g.mem / m

    # interleaved: CPU-heavy and memory-heavy workloads alternate (each class largest first), so hosts fill
    # in both resources at once instead of memory-heavy ones filling hosts whose CPU then stays idle
    cpu_heavy = sorted((g for g in inst.groups if frac(g)[0] >= frac(g)[1]), key=lambda g: (-max(frac(g)), g.workload))
    mem_heavy = sorted((g for g in inst.groups if frac(g)[0] < frac(g)[1]), key=lambda g: (-max(frac(g)), g.workload))
    rank = {g.workload: (2 * i, 0) for i, g in enumerate(cpu_heavy)}
    step = len(cpu_heavy) / len(mem_heavy) if mem_heavy else 1.0
    rank.update({g.workload: (2 * int(i * step) + 1, 1) for i, g in enumerate(mem_heavy)})
    return [lambda g: (-max(frac(g)), g.workload),            # the classic: largest dominant share first
            lambda g: (rank[g.workload], g.workload),
            lambda g: (-sum(frac(g)), g.workload),
            lambda g: (-frac(g)[0], -frac(g)[1], g.workload),
            lambda g: (-frac(g)[1], -frac(g)[0], g.workload)]


# --- a host at a time: dot product ---------------------------------------------------------------------------

def _fill_hosts(inst: _Instance, sort_key: Callable[[_Group], Any], aim: float) -> tuple[list[_Bin], bool, int]:
    """Fill one host at a time: the largest replica left opens it, then the replica whose (CPU, memory) vector
    points most along the host's remaining room (largest dot product) goes in, until nothing fits. Item-centric
    best fit decides each replica alone and leaves hosts full in one resource and empty in the other on mixed
    stacks; filling a host with what matches its remaining room keeps both resources busy (Panigrahy et al.,
    "Heuristics for vector bin packing", 2011). Returns the hosts, whether every replica got one, and the work.

    Replicas of one size, pool set and tenant are one type; a type's workload is taken most replicas left first,
    so spread workloads with many replicas find their distinct hosts. Several identical replicas go in at once
    (half of what fits) to keep the work near-linear."""
    run = _HostFill(inst, sort_key, aim)
    complete = run.run()
    return run.bins, complete, run.work


# CPU, memory, pool set (a number per distinct pools tuple: hashing a tuple of thousands of pool names on every
# lookup made filling quadratic), tenant (or "" when tenants may share)
_Type = tuple[int, int, int, str]


class _HostFill:
    """One host-at-a-time run (see _fill_hosts): the replica types, what is left of each, and the work done."""

    def __init__(self, inst: _Instance, sort_key: Callable[[_Group], Any], aim: float):
        self.inst, self.aim = inst, aim
        groups = sorted(inst.groups, key=sort_key)
        self.types: dict[_Type, list[_Group]] = {}
        by_id: dict[int, int] = {}
        canon: dict[tuple[str, ...], int] = {}
        for g in groups:
            if id(g.pools) not in by_id:
                by_id[id(g.pools)] = canon.setdefault(g.pools, len(canon))
            self.types.setdefault((g.cpu, g.mem, by_id[id(g.pools)], g.tenant if inst.separate else ""),
                                  []).append(g)
        self.order = list(self.types)                # by sort_key of their largest member: the opener's order
        self.left = {g.workload: g.count for g in groups}
        self.remaining = {t: sum(g.count for g in gs) for t, gs in self.types.items()}
        self.opened = {p: 0 for p in inst.order}
        self.bins: list[_Bin] = []
        self.work = 0

    def run(self) -> bool:
        """Open and fill hosts until every replica has one (True) or the pools run out of hosts (False)."""
        first = 0
        while True:
            while first < len(self.order) and not self.remaining[self.order[first]]:
                first += 1
            if first == len(self.order):
                return True
            b = self.open_host(self.order[first])
            if b is None:
                return False
            alive = [t for t in self.order[first:] if self.remaining[t] and b.pool in self.types[t][0].rank
                     and (not self.inst.separate or t[3] == b.tenant)]
            self.work += len(self.order) - first
            self.fill(b, alive)

    def open_host(self, opener: _Type) -> _Bin | None:
        inst = self.inst
        pool = next((p for p in self.types[opener][0].pools if inst.fits(self.types[opener][0], p)
                     and self.opened[p] < inst.counts[p]), None)
        if pool is None:
            return None
        b = _Bin(pool, self.opened[pool], inst.caps[pool], opener[3], len(self.bins))
        self.opened[pool] += 1
        self.bins.append(b)
        return b

    def fill(self, b: _Bin, alive: list[_Type]) -> None:
        idle = self.idle(b, alive)
        self.work += len(alive)
        while alive:
            best, alive = self.best_type(b, alive, idle)
            if best is None:
                break
            if not self.put_type(b, best):
                alive.remove(best)  # every workload of this type is on the host already (spread)

    def idle(self, b: _Bin, alive: list[_Type]) -> tuple[float, float]:
        # the resource the rest needs less of cannot be full on every host: aim each host at the rest's mix, so
        # that memory-heavy replicas spread over all hosts instead of filling the first ones' memory early.
        # aim > 1 overshoots the mix on purpose: measured on generated stacks, 2-3 leaves the fewest hosts
        need_c = sum(t[0] * self.remaining[t] for t in alive) / b.cap_c
        need_m = sum(t[1] * self.remaining[t] for t in alive) / b.cap_m
        top = max(need_c, need_m) or 1.0
        return self.aim * (1 - need_c / top) * b.cap_c, self.aim * (1 - need_m / top) * b.cap_m

    def best_type(self, b: _Bin, alive: list[_Type], idle: tuple[float, float]
                  ) -> tuple[_Type | None, list[_Type]]:
        """The type pointing most along the host's room (largest dot product), and the types that still fit."""
        idle_c, idle_m = idle
        best, best_score = None, -math.inf
        kept = []
        for t in alive:
            if not self.remaining[t] or t[0] > b.rem_c or t[1] > b.rem_m:
                continue  # room only shrinks: a type that does not fit now never will on this host
            kept.append(t)
            score = t[0] / b.cap_c * (b.rem_c - idle_c) / b.cap_c + t[1] / b.cap_m * (b.rem_m - idle_m) / b.cap_m
            if score > best_score:
                best, best_score = t, score
        self.work += len(alive)
        return best, kept

    def put_type(self, b: _Bin, best: _Type) -> bool:
        """Put half of what fits of type `best` on b, most replicas left first; False when none could go."""
        left, remaining = self.left, self.remaining
        fit = min(b.rem_c // best[0] if best[0] else remaining[best],
                  b.rem_m // best[1] if best[1] else remaining[best], remaining[best])
        want = wanted = max(1, fit // 2)
        self.types[best] = [g for g in self.types[best] if left[g.workload]]  # drop the finished ones
        self.work += len(self.types[best])
        for g in sorted((g for g in self.types[best] if not (self.inst.spread and g.workload in b.counts)),
                        key=lambda g: (-left[g.workload], g.workload)):
            self.work += 1
            k = 1 if self.inst.spread else min(want, left[g.workload])
            b.put(g, k)
            left[g.workload] -= k
            remaining[best] -= k
            want -= k
            if not want:
                break
        return want != wanted


# --- every host open: worst fit ---------------------------------------------------------------------------

_WORST_FIT_OP_COST = 2   # one host looked at for one replica (measured: about 0.3 us)


def _worst_fit(inst: _Instance, sort_key: Callable[[_Group], Any], allowance: int) -> tuple[list[_Bin], bool, int]:
    """Every host of every pool open from the start, replicas largest first, each on the host it fits that keeps
    the most room (its scarcer resource). Best fit crowds the largest replicas together and strands room no
    later replica fits; when the host count is the limit, spreading them first leaves each host a share of the
    small ones (an exact fit of one 4, one 3 and one 2 per 9-CPU host). Stops past `allowance` work units;
    returns the used hosts, whether every replica got one, and the work."""
    bins = [_Bin(p, k, inst.caps[p], "", 0) for p in inst.order for k in range(inst.counts[p])]
    work = 0
    for g in sorted(inst.groups, key=sort_key):
        for _ in range(g.count):
            best, room = None, -1.0
            for b in bins:
                if b.pool not in g.rank or b.rem_c < g.cpu or b.rem_m < g.mem \
                        or (inst.separate and b.counts and b.tenant != g.tenant) \
                        or (inst.spread and g.workload in b.counts):
                    continue
                left = min((b.rem_c - g.cpu) / b.cap_c if b.cap_c else 1.0, (b.rem_m - g.mem) / b.cap_m
                           if b.cap_m else 1.0)
                if left > room:
                    best, room = b, left
            work += len(bins) * _WORST_FIT_OP_COST
            if best is None or work > allowance:
                return [], False, work
            best.tenant = g.tenant
            best.put(g, 1)
    used = [b for b in bins if b.counts]
    for seq, b in enumerate(used):
        b.seq = seq
    return _renumber(used), True, work


# --- a host at a time: minimum slack ------------------------------------------------------------------------

_SLACK_MAX_CELLS = 4096   # CPU steps per host the subset-sum may take (a finer grid is left to CP-SAT)


def _min_slack(inst: _Instance, sort_key: Callable[[_Group], Any], allowance: int
               ) -> tuple[list[_Bin], bool, int]:
    """Fill one host at a time with the subset of what is left that uses most of its CPU, memory kept within the
    host (a subset-sum over CPU steps tracking the least memory for each sum): minimum bin slack (Gupta and Ho,
    "A new heuristic algorithm for the one-dimensional bin-packing problem", 1999). Where every host must end
    full, choosing each host's whole content at once finds the fits that replica-by-replica orders miss. Stops
    past `allowance` work units; returns the hosts, whether every replica got one, and the work."""
    groups = sorted(inst.groups, key=sort_key)
    left = {g.workload: g.count for g in groups}
    opened = {p: 0 for p in inst.order}
    bins: list[_Bin] = []
    work = 0
    while work <= allowance:
        first = next((g for g in groups if left[g.workload]), None)
        if first is None:
            return bins, True, work
        pool = next((p for p in first.pools if inst.fits(first, p) and opened[p] < inst.counts[p]), None)
        if pool is None:
            return bins, False, work
        b = _Bin(pool, opened[pool], inst.caps[pool], first.tenant, len(bins))
        b.put(first, 1)   # the largest replica left always opens its host (MBS'), the rest fill what it leaves
        left[first.workload] -= 1
        chosen = _fullest_subset(inst, b, [g for g in groups if left[g.workload] and pool in g.rank
                                           and g.cpu <= b.rem_c and g.mem <= b.rem_m
                                           and not (inst.spread and g.workload in b.counts)
                                           and (not inst.separate or g.tenant == first.tenant)], left)
        if chosen is None:
            return bins, False, work
        pieces, cost = chosen
        work += cost
        for g, k in pieces:
            b.put(g, k)
            left[g.workload] -= k
        opened[pool] += 1
        bins.append(b)
    return bins, False, work


def _fullest_subset(inst: _Instance, b: _Bin, groups: list[_Group], left: dict[str, int]
                    ) -> tuple[list[tuple[_Group, int]], int] | None:
    """The (group, replicas) that fill most of b's remaining CPU within its remaining memory, and the work; None
    when the CPU grid is too fine for the table."""
    step = 0
    for g in groups:
        step = math.gcd(step, g.cpu)
    if not groups:
        return [], 1
    if not step or b.rem_c // step > _SLACK_MAX_CELLS:
        return None
    size = b.rem_c // step
    pieces: list[tuple[_Group, int]] = []   # each group's replicas in binary pieces: 1, 2, 4, ... (0/1 knapsack)
    for g in groups:
        k = 1 if inst.spread else min(left[g.workload], size // (g.cpu // step))
        bit = 1
        while k > 0:
            take = min(bit, k)
            pieces.append((g, take))
            k -= take
            bit *= 2
    inf = b.rem_m + 1
    memory = [0] + [inf] * size           # the least memory that reaches each CPU sum
    took = []
    for g, k in pieces:
        c, m = g.cpu // step * k, g.mem * k
        row = bytearray(size + 1)
        for s in range(size, c - 1, -1):
            if memory[s - c] + m < memory[s]:
                memory[s] = memory[s - c] + m
                row[s] = 1
        took.append(row)
    best = max(s for s in range(size + 1) if memory[s] <= b.rem_m)
    chosen: dict[str, list[Any]] = {}
    s = best
    for i in range(len(pieces) - 1, -1, -1):   # walk the choices back from the best sum
        if took[i][s]:
            g, k = pieces[i]
            chosen.setdefault(g.workload, [g, 0])[1] += k
            s -= g.cpu // step * k
    return [(g, k) for g, k in chosen.values()], len(pieces) * (size + 1)


# --- improvement: empty the least-loaded hosts ------------------------------------------------------------

def _empty_hosts(inst: _Instance, bins: list[_Bin], ops_budget: int) -> tuple[list[_Bin], int]:
    """Repeatedly try to move every replica of the least-loaded host onto other hosts (best fit); keep the
    move only when the host empties. Work is counted, not timed, so the result is deterministic."""
    by_name = {g.workload: g for g in inst.groups}
    bins = list(bins)
    by_seq = {b.seq: b for b in bins}
    ops = 0
    improved = True
    while improved and ops < ops_budget:
        improved = False
        # the hosts a replica may move to, per (pools, tenant): scanning only those keeps stacks with tenants
        # apart or several pools cheap (rebuilt after each emptied host)
        eligible: dict[tuple[tuple[str, ...], str], list[_Bin]] = {}
        for victim in sorted(bins, key=lambda b: (b.load(), b.seq)):
            if ops >= ops_budget:
                break
            trial: dict[int, tuple[int, int, dict[str, int]]] = {}
            ok = True
            for w, n in sorted(victim.counts.items(), key=lambda kv: (-by_name[kv[0]].cpu, kv[0])):
                g = by_name[w]
                where = (g.pools, g.tenant if inst.separate else "")
                if where not in eligible:
                    ops += len(bins)
                    eligible[where] = [b for b in bins
                                       if b.pool in g.rank and (not inst.separate or b.tenant == g.tenant)]
                for _ in range(n):
                    best: tuple[float, int] | None = None
                    for b in eligible[where]:
                        ops += 1
                        if b is victim:
                            continue
                        rc, rm, added = trial.get(b.seq, (b.rem_c, b.rem_m, {}))
                        if rc < g.cpu or rm < g.mem:
                            continue
                        if inst.spread and (w in b.counts or w in added):
                            continue
                        key = (min((rc - g.cpu) / b.cap_c, (rm - g.mem) / b.cap_m), b.seq)
                        if best is None or key < best:
                            best = key
                    if best is None:
                        ok = False
                        break
                    seq = best[1]
                    target = by_seq[seq]
                    rc, rm, added = trial.get(seq, (target.rem_c, target.rem_m, {}))
                    added = dict(added)
                    added[w] = added.get(w, 0) + 1
                    trial[seq] = (rc - g.cpu, rm - g.mem, added)
                if not ok:
                    break
            if ok:
                for b in bins:
                    if b.seq in trial:
                        b.rem_c, b.rem_m, added = trial[b.seq]
                        for w, n in added.items():
                            b.counts[w] = b.counts.get(w, 0) + n
                bins.remove(victim)
                improved = True
                break
    return bins, ops


# --- exact: CP-SAT -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Exact:
    bins: list[_Bin] | None
    optimal: bool
    bound: int


def _model_size(inst: _Instance, upper: int) -> int:
    """Variables of the CP-SAT model when no solution may use more than `upper` hosts."""
    slots = {p: min(inst.counts[p], upper) for p in inst.order}
    per_pools: dict[int, int] = {}   # groups share pools tuples: sum each once
    total = 0
    for g in inst.groups:
        n = per_pools.get(id(g.pools))
        if n is None:
            n = per_pools[id(g.pools)] = sum(slots[p] for p in g.pools)
        total += n
    return total * (2 if inst.separate else 1)


def _exact(inst: _Instance, start: list[_Bin], lower: int, budget: float) -> _Exact | None:
    """Solve exactly with CP-SAT, hinted with the best heuristic answer. None when the model is too large.

    Deterministic: one worker, a fixed seed and a deterministic-time limit (the budget). A wall-clock cap of
    5x the budget guards slow machines; only when that cap is hit can two runs differ."""
    upper = len(start)
    if _model_size(inst, upper) > EXACT_MAX_VARIABLES:
        return None
    from ortools.sat.python import cp_model  # lazy: hundreds of ms to import, only paid when solving

    model, used, n = _model(inst, {p: min(inst.counts[p], upper) for p in inst.order}, lower)
    _hint(model, used, n, start)
    solver = _solver(budget)
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _Exact(None, False, lower)
    bound = max(lower, math.ceil(solver.best_objective_bound - 1e-6))
    return _Exact(_solution(inst, solver, used, n), status == cp_model.OPTIMAL, bound)


def _model(inst: _Instance, slots: dict[str, int], lower: int) -> tuple[Any, dict[tuple[str, int], Any],
                                                                        dict[tuple[str, str, int], Any]]:
    """The CP-SAT model: used[pool, k] says host k of pool is used, n[workload, pool, k] how many replicas it
    holds; capacity, tenants apart and every replica placed are constraints, the hosts used the objective."""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    used: dict[tuple[str, int], Any] = {}
    wanted = {p for g in inst.groups for p in g.pools}
    for p in inst.order:
        if p not in wanted:
            continue
        for k in range(slots[p]):
            used[p, k] = model.new_bool_var(f"y_{p}_{k}")
            if k:
                model.add(used[p, k] <= used[p, k - 1])  # hosts of a pool are interchangeable: use them in order
    n: dict[tuple[str, str, int], Any] = {}
    for g in inst.groups:
        terms = []
        for p in g.pools:
            if not inst.fits(g, p):
                continue
            top = inst.per_host(g, p)
            for k in range(slots[p]):
                v = model.new_int_var(0, top, f"n_{g.workload}_{p}_{k}")
                model.add(v <= top * used[p, k])
                n[g.workload, p, k] = v
                terms.append(v)
        model.add(sum(terms) == g.count)
    tenants = sorted({g.tenant for g in inst.groups})
    for (p, k), y in used.items():
        here = [(g, n[g.workload, p, k]) for g in inst.groups if (g.workload, p, k) in n]
        cap_c, cap_m = inst.caps[p]
        model.add(sum(g.cpu * v for g, v in here) <= cap_c * y)
        model.add(sum(g.mem * v for g, v in here) <= cap_m * y)
        if inst.separate and len(tenants) > 1:
            z = {t: model.new_bool_var(f"z_{t}_{p}_{k}") for t in tenants}
            model.add(sum(z.values()) <= y)
            for g, v in here:
                model.add(v <= inst.per_host(g, p) * z[g.tenant])
    model.add(sum(used.values()) >= lower)
    model.minimize(sum(used.values()))
    return model, used, n


def _hint(model: Any, used: dict[tuple[str, int], Any], n: dict[tuple[str, str, int], Any],
          start: list[_Bin]) -> None:
    """Start the solver from the best heuristic answer (hosts numbered 0..k-1 per pool, like the slots)."""
    for b in start:
        model.add_hint(used[b.pool, b.index], 1)
    hinted = {(b.pool, b.index) for b in start}
    for slot, y in used.items():
        if slot not in hinted:
            model.add_hint(y, 0)
    where = {(w, b.pool, b.index): c for b in start for w, c in b.counts.items()}
    for key, v in n.items():
        model.add_hint(v, where.get(key, 0))


def _solution(inst: _Instance, solver: Any, used: dict[tuple[str, int], Any],
              n: dict[tuple[str, str, int], Any]) -> list[_Bin]:
    bins: list[_Bin] = []
    for (p, k), y in used.items():
        if not solver.value(y):
            continue
        b = _Bin(p, k, inst.caps[p], "", len(bins))
        for g in inst.groups:
            var = n.get((g.workload, p, k))
            c = solver.value(var) if var is not None else 0
            if c:
                b.put(g, c)
                b.tenant = g.tenant
        bins.append(b)
    return bins


# --- putting it together --------------------------------------------------------------------------------

def _renumber(bins: list[_Bin]) -> list[_Bin]:
    """Hosts of each pool numbered 0..k-1 in a canonical order, so equal packings print equally."""
    out = sorted((b for b in bins if b.counts), key=lambda b: (b.pool, b.index, b.seq))
    per_pool: dict[str, int] = {}
    for b in out:
        b.index = per_pool.get(b.pool, 0)
        per_pool[b.pool] = b.index + 1
    return out


def _hosts(inst: _Instance, bins: list[_Bin], items: Sequence[Item]) -> tuple[Host, ...]:
    by_workload: dict[str, list[Item]] = {}
    for it in items:
        by_workload.setdefault(it.workload, []).append(it)
    taken = {w: 0 for w in by_workload}
    hosts = []
    for b in _renumber(bins):
        h = Host(b.pool, b.index, b.cap_c, b.cap_m)
        for w in sorted(b.counts):
            for _ in range(b.counts[w]):
                h.add(by_workload[w][taken[w]])
                taken[w] += 1
        hosts.append(h)
    return tuple(hosts)


class _PoolShapes:
    """The pools a host may move to, one per shape (capacity and power figures) instead of all of them.

    Pools of one shape differ only in their place in the spec, so the first with a host left (and the host's own
    pool) stand for the rest: the choice is the one a scan of every pool makes, without the scan that made right-
    sizing hosts on thousands of pools quadratic."""

    def __init__(self, inst: _Instance, spec: Mapping[str, HostPool]):
        self.inst = inst
        self.pos = {p: i for i, p in enumerate(inst.order)}
        self.shape = {p: (inst.caps[p], spec[p].idleWatts, spec[p].peakWatts, spec[p].cpu_millis)
                      for p in inst.order}
        self.known: dict[tuple[int, ...], tuple[set[str], list[list[str]]]] = {}
        self.keep: list[tuple[str, ...]] = []  # the pools tuples whose ids are keys above stay alive

    def classes(self, groups: list[_Group]) -> tuple[set[str], list[list[str]]]:
        """The pools every group may use, and those pools by shape (each list in spec order)."""
        key = tuple(sorted({id(g.pools) for g in groups}))
        found = self.known.get(key)
        if found is None:
            allowed = set(groups[0].pools).intersection(*(g.rank for g in groups[1:]))
            by_shape: dict[Any, list[str]] = {}
            for p in sorted(allowed, key=self.pos.__getitem__):
                by_shape.setdefault(self.shape[p], []).append(p)
            found = self.known[key] = (allowed, list(by_shape.values()))
            self.keep.extend(g.pools for g in groups)
        return found

    def options(self, b: _Bin, groups: list[_Group], left: Mapping[str, int], cpu: int, mem: int) -> list[str]:
        """The pools b may move to, in spec order: b's own, and per shape with room the first with a host left."""
        allowed, classes = self.classes(groups)
        caps = self.inst.caps
        out = [b.pool] if b.pool in allowed and caps[b.pool][0] >= cpu and caps[b.pool][1] >= mem else []
        for pools in classes:
            c, m = caps[pools[0]]
            if c < cpu or m < mem:
                continue
            first = next((p for p in pools if left[p] > 0 and p != b.pool), None)
            if first is not None:
                out.append(first)
        return sorted(out, key=self.pos.__getitem__)


def _right_size(inst: _Instance, bins: list[_Bin], pools: Sequence[HostPool]) -> None:
    """Move each host, whole, to the pool that runs its load with the least power (or, without power figures,
    the smallest machine) among the pools every replica on it may use. Host count and constraints unchanged."""
    by_name = {g.workload: g for g in inst.groups}
    spec = {p.name: p for p in pools}
    left = dict(inst.counts)
    for b in bins:
        left[b.pool] -= 1

    def watts(pool: str, cpu: int) -> float:
        p = spec[pool]
        if p.idleWatts is None or p.peakWatts is None:
            return 0.0
        return p.idleWatts + (p.peakWatts - p.idleWatts) * min(1.0, cpu / p.cpu_millis)

    shapes = _PoolShapes(inst, spec)
    for b in sorted(bins, key=lambda b: (b.load(), b.seq)):
        cpu, mem = b.cap_c - b.rem_c, b.cap_m - b.rem_m
        options = shapes.options(b, [by_name[w] for w in b.counts], left, cpu, mem)
        known = all(spec[p].idleWatts is not None and spec[p].peakWatts is not None for p in options)
        best = min(options, key=lambda p: (watts(p, cpu) if known else 0.0, inst.caps[p], p != b.pool))
        if best != b.pool:
            left[b.pool] += 1
            left[best] -= 1
            b.pool, b.index = best, inst.counts[best] + b.seq  # renumbered later
            b.cap_c, b.cap_m = inst.caps[best]
            b.rem_c, b.rem_m = b.cap_c - cpu, b.cap_m - mem


def _copy(bins: list[_Bin]) -> list[_Bin]:
    out = []
    for b in bins:
        c = _Bin(b.pool, b.index, (b.cap_c, b.cap_m), b.tenant, b.seq)
        c.rem_c, c.rem_m, c.counts = b.rem_c, b.rem_m, dict(b.counts)
        out.append(c)
    return out


def _placed_only(inst: _Instance, items: list[Item], bins: list[_Bin]) -> tuple[list[Item], _Instance]:
    """What did get a host, packed and bounded on its own (the rest is reported as unplaced)."""
    done: dict[str, int] = {}
    for b in bins:
        for w, c in b.counts.items():
            done[w] = done.get(w, 0) + c
    items = [i for i in items if i.replica < done.get(i.workload, 0)]
    return items, _Instance(tuple(_groups(items)), inst.caps, inst.counts, inst.order, inst.spread, inst.separate)


def _when_out_of_hosts(inst: _Instance, keys: list[Callable[[_Group], Any]], bins: list[_Bin],
                       unplaced: list[Unplaced], solver_budget: float
                       ) -> tuple[list[_Bin], list[Unplaced], str]:
    """Best fit left replicas without a host. A replica bigger than every host it may use is refused as it is;
    otherwise the pools may still hold the stack (best fit's greedy order fails where an exact packing fits), so
    the other orders and then CP-SAT, with the pools' host counts as the only limit, get the solver budget
    before the stack is refused, and the refusal says whether no packing exists (proven) or none was found."""
    by_name = {g.workload: g for g in inst.groups}
    if any(not any(inst.fits(by_name[u.workload], p) for p in by_name[u.workload].pools) for u in unplaced):
        return bins, unplaced, "best-fit decreasing"
    # 0 means "no improvement"; finding a packing that fits is not an improvement, so it gets the default
    budget = solver_budget if solver_budget > 0 else DEFAULT_SOLVER_BUDGET
    found, method, why = _fit_within_counts(inst, keys, budget)
    if found is not None and not _violations(inst, found):   # belt and braces, as for every rescue
        return found, [], f"{method} (best-fit decreasing ran out of hosts)"
    return bins, [Unplaced(u.workload, u.replicas, f"{u.reason}; {why}") for u in unplaced], "best-fit decreasing"


def _fit_within_counts(inst: _Instance, keys: list[Callable[[_Group], Any]], budget: float
                       ) -> tuple[list[_Bin] | None, str, str]:
    """A packing within the pools' host counts: (hosts, how found, "") or (None, "", why none: proven or not)."""
    proof = _proof(inst)
    if proof:
        return None, "", f"proven: {proof}"
    allowance, spent = int(budget * _OPS_PER_SECOND * 0.2), 0
    for key in keys:   # the cheap answers first: other greedy orders, then a host at a time
        for biggest in (False, True):
            if spent >= allowance or (key is keys[0] and not biggest):   # that one is best fit's own run
                continue
            other, missed, cost = _greedy(inst, key, biggest, 0)
            spent += cost * _GREEDY_OP_COST
            if not missed:
                return other, "best-fit decreasing (variant)", ""
    for aim in (2.0, 3.0):
        if spent >= allowance:
            break
        filled, complete, cost = _fill_hosts(inst, keys[0], aim)
        spent += cost * _FILL_OP_COST
        if complete:
            return filled, "host-at-a-time fill", ""
    for key in keys[:2]:
        spread, complete, cost = _worst_fit(inst, key, allowance - spent)
        spent += cost
        if complete:
            return spread, "worst fit over every host", ""
    slack, complete, cost = _min_slack(inst, keys[0], allowance - spent)
    spent += cost
    if complete:
        return slack, "minimum slack, a host at a time", ""
    size = _model_size(inst, max(inst.counts.values()))
    if size > EXACT_MAX_VARIABLES:
        return None, "", (f"not proven: no packing found, and the pools' hosts are too many for the exact solver "
                          f"({size} variables, at most {EXACT_MAX_VARIABLES})")
    return _exact_fit(inst, budget)


def _solver(budget: float) -> Any:
    """A deterministic CP-SAT solver: one worker, a fixed seed, the budget in deterministic time (the wall clock only
    as a guard at 5x), so the same input gives the same hosts on any machine."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 7
    solver.parameters.max_deterministic_time = budget
    solver.parameters.max_time_in_seconds = 5 * budget + 1
    return solver


def _exact_fit(inst: _Instance, budget: float) -> tuple[list[_Bin] | None, str, str]:
    """CP-SAT over every host of every pool: a packing, a proof that none exists, or the budget ran out."""
    from ortools.sat.python import cp_model  # lazy: hundreds of ms to import, only paid when solving

    model, used, n = _model(inst, dict(inst.counts), 0)
    solver = _solver(budget)
    status = solver.solve(model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        bins = _solution(inst, solver, used, n)
        if not _violations(inst, bins):  # belt and braces, as for every solver answer
            return bins, "CP-SAT", ""
    if status == cp_model.INFEASIBLE:
        hosts = sum(inst.counts[p] for p in {p for p, _ in used})
        return None, "", f"proven: the exact solver (CP-SAT) showed that no packing fits on the pools' {hosts} hosts"
    return None, "", (f"not proven: the exact solver (CP-SAT) found no packing within its budget of {budget:g} s "
                      "(try a larger --solver-budget)")


def _proof(inst: _Instance) -> str:
    """Why no packing fits within the pools' host counts, when a bound shows it ("" when none does)."""
    groups = [g for g in inst.groups if g.count]
    for comp in _components(inst, groups):
        tenants = sorted({g.tenant for g in comp}) if inst.separate else [""]
        needed = 0
        for t in tenants:
            bounds = _set_bounds(inst, [g for g in comp if not inst.separate or g.tenant == t])
            for bound, pools, inside in bounds:
                why = _short(inst, bound, pools, inside)
                if why:
                    return why
            needed += max(b for b, _, _ in bounds)
        linked = {p for g in comp for p in g.pools}
        pools = [p for p in inst.order if p in linked]
        have = sum(inst.counts[p] for p in pools)
        if needed > have:
            return (f"tenants kept apart need at least {needed} hosts of pool(s) {_pool_list(pools)}, "
                    f"which have {have}")
    return ""


def _short(inst: _Instance, bound: int, pools: list[str], inside: list[_Group]) -> str:
    """Why `inside` cannot fit on `pools` ("" when the bounds allow it)."""
    have = sum(inst.counts[p] for p in pools)
    cpu = sum(g.cpu * g.count for g in inside)
    mem = sum(g.mem * g.count for g in inside)
    cpu_have = sum(inst.caps[p][0] * inst.counts[p] for p in pools)
    mem_have = sum(inst.caps[p][1] * inst.counts[p] for p in pools)
    where = f"pool(s) {_pool_list(pools)}"
    if cpu > cpu_have:
        return f"the replicas need {cpu}m CPU and the {have} hosts of {where} offer {cpu_have}m after headroom"
    if mem > mem_have:
        return (f"the replicas need {mem // 2**20}Mi of memory and the {have} hosts of {where} offer "
                f"{mem_have // 2**20}Mi after headroom")
    if bound > have:
        return f"at least {bound} hosts are needed on {where}, which have {have}"
    return ""


def _pool_list(pools: Sequence[str]) -> str:
    """Pool names for a one-line message: the first few, then how many more."""
    return ", ".join(pools) if len(pools) <= 6 else f"{', '.join(pools[:5])} and {len(pools) - 5} more"


def pack(placements: Sequence[Placement], pools: Sequence[HostPool], profile: Profile, *,
         solver_budget: float = DEFAULT_SOLVER_BUDGET, strict: bool = True) -> Packing:
    """Best-fit decreasing, then improved within `solver_budget` seconds (0 disables): never worse, never
    breaking a hard constraint. strict: raise PolicyError when a replica gets no host; otherwise report it."""
    items = items_of(placements)
    inst = _instance(items, pools, profile)
    keys = _sort_keys(inst)
    bins, unplaced, work = _greedy(inst, keys[0], False, profile.headroom_percent)
    method = "best-fit decreasing"
    if unplaced:
        bins, unplaced, method = _when_out_of_hosts(inst, keys, bins, unplaced, solver_budget)
    if unplaced and strict:
        raise PolicyError(f"workload {unplaced[0].workload}: {unplaced[0].reason}")
    if unplaced:
        items, inst = _placed_only(inst, items, bins)
    lower = _lower_bound(inst)
    greedy_count = len(bins)
    optimal = greedy_count <= lower
    if not optimal and solver_budget > 0:
        # improvement only where the plain answer may not be optimal, so a tiny stack never loads the solver.
        # Work is counted, not timed, so the same input gives the same answer on any machine and load.
        exact_fits = _model_size(inst, len(bins)) <= EXACT_MAX_VARIABLES
        allowance = int(solver_budget * _OPS_PER_SECOND * (0.2 if exact_fits else 1.0))
        spent = 0
        for aim in (2.0, 3.0):
            # one host at a time first: on large mixed stacks it is the best start for emptying hosts
            if spent + work * _GREEDY_OP_COST > allowance // 2:
                break
            filled, complete, cost = _fill_hosts(inst, keys[0], aim)
            spent += cost * _FILL_OP_COST
            if complete and len(filled) < len(bins):
                bins, method = filled, "host-at-a-time fill"
        variants = [(k, big) for k in keys for big in (False, True) if (k, big) != (keys[0], False)]
        variants.sort(key=lambda v: v[0] is not keys[1])  # interleaved first: it helps most on mixed stacks
        for key, biggest in variants:
            if spent + work * _GREEDY_OP_COST > allowance // 2:
                break
            other, missed, cost = _greedy(inst, key, biggest, profile.headroom_percent)
            spent += cost * _GREEDY_OP_COST
            if not missed and len(other) < len(bins):
                bins, method = other, "best-fit decreasing (variant)"
        if len(bins) > lower:
            emptied, _ = _empty_hosts(inst, _copy(bins), allowance - spent)
            if len(emptied) < len(bins):
                bins, method = emptied, f"{method.removesuffix(' (variant)')}, hosts emptied"
        optimal = len(bins) <= lower
        if not optimal:
            bins = _renumber(bins)  # the hint needs hosts numbered 0..k-1 per pool, like the model's slots
            exact = _exact(inst, bins, lower, solver_budget * 0.8)
            if exact is not None:
                lower = max(lower, exact.bound)  # CP-SAT's proven bound is a bound too
                # belt and braces: a solver answer is taken only when strictly better and legal
                if exact.bins is not None and len(exact.bins) < len(bins) and not _violations(inst, exact.bins):
                    bins, method = exact.bins, "CP-SAT"
            optimal = len(bins) <= lower
    _right_size(inst, bins, pools)
    return Packing(_hosts(inst, bins, items), lower, greedy_count, method, optimal, tuple(unplaced))


def _violations(inst: _Instance, bins: list[_Bin]) -> list[str]:
    by_name = {g.workload: g for g in inst.groups}
    out = []
    placed: dict[str, int] = {}
    for b in bins:
        if sum(by_name[w].cpu * c for w, c in b.counts.items()) > b.cap_c:
            out.append(f"{b.pool}-{b.index}: CPU over capacity")
        if sum(by_name[w].mem * c for w, c in b.counts.items()) > b.cap_m:
            out.append(f"{b.pool}-{b.index}: memory over capacity")
        for w, c in b.counts.items():
            placed[w] = placed.get(w, 0) + c
            if b.pool not in by_name[w].rank:
                out.append(f"{w} on ineligible pool {b.pool}")
            if inst.spread and c > 1:
                out.append(f"{w}: {c} replicas on {b.pool}-{b.index}")
        if inst.separate and len({by_name[w].tenant for w in b.counts}) > 1:
            out.append(f"{b.pool}-{b.index}: tenants share a host")
    per_pool: dict[str, set[int]] = {}
    for b in bins:
        per_pool.setdefault(b.pool, set()).add(b.index)
    for p, idx in per_pool.items():
        if len(idx) > inst.counts[p] or max(idx) >= inst.counts[p]:
            out.append(f"pool {p}: more hosts than its count")
    for g in inst.groups:
        if placed.get(g.workload, 0) != g.count:
            out.append(f"{g.workload}: {placed.get(g.workload, 0)} of {g.count} replicas placed")
    return out


def violations(packing: Packing, placements: Sequence[Placement], pools: Sequence[HostPool],
               profile: Profile) -> list[str]:
    """Every hard constraint a packing breaks (empty when legal): capacity after headroom, pool eligibility and
    counts, tenants apart, replicas spread, every placed replica exactly once."""
    out = []
    caps = {p.name: _capacity(p, profile) for p in pools}
    counts = {p.name: p.count for p in pools}
    short = {u.workload: u.replicas for u in packing.unplaced}
    wanted = {p.name: p.workload.replicas - short.get(p.name, 0) for p in placements}
    expected = {(i.workload, i.replica) for i in items_of(placements) if i.replica < wanted[i.workload]}
    seen: set[tuple[str, int]] = set()
    names: set[str] = set()
    for h in packing.hosts:
        if h.name in names:
            out.append(f"{h.name}: listed twice")
        names.add(h.name)
        if h.index >= counts.get(h.pool, 0):
            out.append(f"{h.name}: pool {h.pool} has only {counts.get(h.pool, 0)} hosts")
        cap_c, cap_m = caps[h.pool]
        if sum(i.cpu_millis for i in h.items) > cap_c or sum(i.memory_bytes for i in h.items) > cap_m:
            out.append(f"{h.name}: over capacity after {profile.headroom_percent}% headroom")
        if profile.separate_tenants and len({i.tenant for i in h.items}) > 1:
            out.append(f"{h.name}: tenants {sorted({i.tenant for i in h.items})} share it")
        if profile.spread_replicas and len({i.workload for i in h.items}) < len(h.items):
            out.append(f"{h.name}: two replicas of one workload")
        for i in h.items:
            if h.pool not in i.pools:
                out.append(f"{replica_ref(i.workload, i.replica)} on {h.name}: pool not eligible")
            if (i.workload, i.replica) in seen:
                out.append(f"{replica_ref(i.workload, i.replica)}: placed twice")
            seen.add((i.workload, i.replica))
    missing = set(expected) - seen
    if missing:
        out.append(f"{len(missing)} replicas not placed: {sorted(missing)[:3]}")
    return out


# --- the lower bound ---------------------------------------------------------------------------------------

def _hosts_to_cover(demand: int, hosts: list[tuple[int, int]]) -> int:
    """Fewest hosts whose capacities add up to demand: the largest first. hosts: (capacity, how many)."""
    need = 0
    for cap, count in sorted(hosts, reverse=True):
        if demand <= 0:
            break
        if cap <= 0:
            continue
        take = min(count, math.ceil(demand / cap))
        need += take
        demand -= take * cap
    return need


def _bound_on(groups: list[_Group], pools: list[str], inst: _Instance) -> int:
    """Hosts needed by `groups` when only `pools` may hold them."""
    if not groups:
        return 0
    cpu = sum(g.cpu * g.count for g in groups)
    mem = sum(g.mem * g.count for g in groups)
    b = max(_hosts_to_cover(cpu, [(inst.caps[p][0], inst.counts[p]) for p in pools]),
            _hosts_to_cover(mem, [(inst.caps[p][1], inst.counts[p]) for p in pools]))
    # items more than half of the largest host (in one resource) cannot share a host with each other
    max_c = max(inst.caps[p][0] for p in pools)
    max_m = max(inst.caps[p][1] for p in pools)
    b = max(b, sum(g.count for g in groups if 2 * g.cpu > max_c), sum(g.count for g in groups if 2 * g.mem > max_m))
    if inst.spread:
        b = max(b, max(g.count for g in groups))
    else:
        # replicas of one workload: at most per_host of them fit on any one host (pools of one size alike)
        sizes: dict[int, set[tuple[int, int]]] = {}
        for g in groups:
            caps = sizes.get(id(g.pools))
            if caps is None:
                caps = sizes[id(g.pools)] = {inst.caps[p] for p in g.pools}
            per = max((min(g.count, c // g.cpu if g.cpu else g.count, m // g.mem if g.mem else g.count)
                       for c, m in caps if g.cpu <= c and g.mem <= m), default=0)
            if per:
                b = max(b, math.ceil(g.count / per))
    return b


def _components(inst: _Instance, groups: list[_Group]) -> list[list[_Group]]:
    """Groups by the pools they link (a workload that may use either joins two); components share no host."""
    parent = {p: p for p in inst.order}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    seen: set[int] = set()
    for g in groups:
        if id(g.pools) not in seen:   # workloads share pools tuples: link each once
            seen.add(id(g.pools))
            for p in g.pools[1:]:
                parent[root(p)] = root(g.pools[0])
    components: dict[str, list[_Group]] = {}
    for g in groups:
        components.setdefault(root(g.pools[0]), []).append(g)
    return list(components.values())


def _set_bounds(inst: _Instance, mine: list[_Group]) -> list[tuple[int, list[str], list[_Group]]]:
    """A pool set S must hold every workload whose pools all lie in S: for each workload's set and for all of
    them, the hosts those workloads need, S's pools (spec order) and those workloads."""
    own: dict[int, frozenset[str]] = {}
    for g in mine:
        if id(g.pools) not in own:
            own[id(g.pools)] = frozenset(g.pools)
    out = []
    for s in set(own.values()) | {frozenset().union(*own.values())}:
        inside = [g for g in mine if own[id(g.pools)] <= s]
        pools = [p for p in inst.order if p in s]
        out.append((_bound_on(inside, pools, inst), pools, inside))
    return out


def _lower_bound(inst: _Instance) -> int:
    groups = [g for g in inst.groups if g.count]
    if not groups:
        return 0
    total = 0
    for comp in _components(inst, groups):
        tenants = sorted({g.tenant for g in comp}) if inst.separate else [""]
        for t in tenants:
            mine = [g for g in comp if not inst.separate or g.tenant == t]
            total += max(b for b, _, _ in _set_bounds(inst, mine))
    return total


def lower_bound(items: Sequence[Item], pools: Sequence[HostPool], profile: Profile) -> int:
    """A bound no packing can beat: capacity (largest hosts first), pool eligibility, spread replicas, tenants
    apart and items too big to share a host."""
    return _lower_bound(_instance(items, pools, profile))
