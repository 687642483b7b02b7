"""Packing: best-fit decreasing improved within a budget, hard constraints always kept, an honest lower bound."""
from __future__ import annotations

import random

import pytest

from hybridorch.errors import PolicyError
from hybridorch.core.packing import _fill_hosts, _instance, _sort_keys, _violations, items_of, lower_bound, pack, violations
from hybridorch.core.policy import PROFILES, make_profile, place_workload
from hybridorch.core.runtime import Runtime
from hybridorch.core.spec import HostPool, Resources, Workload

POOL = (HostPool("p", cpu="4", memory="8Gi", count=10),)


def placements(*specs, profile="efficient", pools=POOL):
    out = []
    for i, (cpu, mem, replicas, tenant) in enumerate(specs):
        w = Workload(name=f"w{i}", image="x", resources=Resources(cpu, mem), replicas=replicas, tenant=tenant,
                     trust="trusted")
        out.append(place_workload(w, PROFILES[profile], pools))
    return out


def test_packs_onto_as_few_hosts_as_the_bound():
    ps = placements(("2", "1Gi", 1, "a"), ("2", "1Gi", 1, "a"), ("1", "1Gi", 1, "a"), ("3", "1Gi", 1, "a"))
    result = pack(ps, POOL, PROFILES["efficient"])
    assert result.hosts_used == result.lower_bound == 2 and result.optimal
    assert sorted(h.cpu_used for h in result.hosts) == [4000, 4000]


def test_headroom_is_kept():
    ps = placements(("2", "1Gi", 1, "a"), ("2", "1Gi", 1, "a"), profile="balanced")
    result = pack(ps, POOL, PROFILES["balanced"])  # 10% headroom: 3.6 cores usable
    assert result.hosts_used == 2


def test_secure_keeps_tenants_apart_and_spreads_replicas():
    ps = placements(("100m", "64Mi", 3, "a"), ("100m", "64Mi", 1, "b"), profile="secure")
    result = pack(ps, POOL, PROFILES["secure"])
    for host in result.hosts:
        assert len({i.tenant for i in host.items}) == 1
        assert len({i.workload for i in host.items}) == len(host.items)
    assert result.hosts_used == result.lower_bound == 4


def test_vm_overhead_counts():
    pool = (HostPool("p", cpu="1", memory="1Gi", count=5),)
    w = Workload(name="v", image="x", runtime="vm", resources=Resources("500m", "512Mi"), replicas=2)
    p = place_workload(w, make_profile("efficient", {}), pool)
    result = pack([p], pool, PROFILES["efficient"])
    assert result.hosts[0].memory_used == 512 * 2**20 + 256 * 2**20
    assert result.hosts_used == 2


def test_too_big_and_out_of_hosts_are_errors_or_listed():
    with pytest.raises(PolicyError, match="more than a host"):
        pack(placements(("8", "1Gi", 1, "a")), POOL, PROFILES["efficient"])
    small = (HostPool("p", cpu="1", memory="1Gi", count=1),)
    ps = placements(("1", "1Gi", 2, "a"), pools=small)
    with pytest.raises(PolicyError, match="ran out of hosts"):
        pack(ps, small, PROFILES["efficient"])
    lenient = pack(ps, small, PROFILES["efficient"], strict=False)
    assert [(u.workload, u.replicas) for u in lenient.unplaced] == [("w0", 1)]
    assert lenient.hosts_used == 1 and "ran out of hosts" in lenient.unplaced[0].reason
    assert violations(lenient, ps, small, PROFILES["efficient"]) == []


def test_disjoint_pools_are_bounded_separately():
    pools = (HostPool("lin", cpu="4", memory="8Gi"), HostPool("win", os="windows", cpu="4", memory="8Gi"))
    ws = [Workload(name="l", image="x", resources=Resources("1", "1Gi"), trust="trusted"),
          Workload(name="w", image="x", os="windows", resources=Resources("1", "1Gi"), trust="trusted")]
    ps = [place_workload(w, PROFILES["efficient"], pools) for w in ws]
    result = pack(ps, pools, PROFILES["efficient"])
    assert result.hosts_used == result.lower_bound == 2
    assert {h.pool for h in result.hosts} == {"lin", "win"}


def test_seven_workloads_fit_on_three_hosts_not_four():
    # the held-out shape: best fit on the scarcer resource strands the other and opens a fourth host
    ps = placements(("2500m", "4Gi", 1, "a"), ("1", "3Gi", 1, "a"), ("1", "1Gi", 1, "a"), ("2", "3Gi", 1, "a"),
                    ("2", "1Gi", 1, "a"), ("2", "1Gi", 1, "a"), ("1", "5Gi", 1, "a"))
    plain = pack(ps, POOL, PROFILES["efficient"], solver_budget=0)
    better = pack(ps, POOL, PROFILES["efficient"])
    assert (plain.hosts_used, better.hosts_used, better.lower_bound) == (4, 3, 3)
    assert better.greedy_hosts == 4 and better.optimal and not plain.optimal
    assert violations(better, ps, POOL, PROFILES["efficient"]) == []


def test_memory_heavy_replicas_do_not_strand_cpu():
    # two 100m/4Gi replicas fill a 4-CPU host's memory; the CPU-heavy ones must go beside them, not apart
    ps = placements(("100m", "4Gi", 4, "a"), ("3500m", "512Mi", 2, "a"), ("1800m", "1Gi", 4, "a"))
    result = pack(ps, POOL, PROFILES["efficient"])
    assert result.optimal and result.hosts_used == result.lower_bound
    assert violations(result, ps, POOL, PROFILES["efficient"]) == []


def random_instance(rng: random.Random, profile_name: str, n: int):
    pools = (HostPool("big", cpu="16", memory="64Gi", count=rng.randint(3, 8)),
             HostPool("small", cpu="4", memory="8Gi", count=rng.randint(4, 12)),
             HostPool("arm", arch="arm64", cpu="8", memory="16Gi", count=6),
             HostPool("win", os="windows", cpu="8", memory="32Gi", count=4))
    profile = PROFILES[profile_name]
    out = []
    for i in range(n):
        w = Workload(name=f"w{i}", image="x", trust=rng.choice(["trusted", "internal", "untrusted"]),
                     resources=Resources(f"{rng.choice([100, 250, 500, 1000, 1500, 2000, 3000])}m",
                                         f"{rng.choice([128, 512, 1024, 2048, 4096, 6144])}Mi"),
                     replicas=rng.randint(1, 4), tenant=rng.choice(["a", "b", "c"]),
                     arch=rng.choice(["amd64", "amd64", "arm64"]), os=rng.choice(["linux"] * 5 + ["windows"]),
                     runtime=rng.choice([None, None, Runtime.VM]))     # None: auto
        out.append(place_workload(w, profile, pools))
    return out, pools, profile


@pytest.mark.parametrize("profile_name", ["efficient", "balanced", "secure"])
def test_random_instances_never_break_a_constraint_and_never_lose_to_best_fit(profile_name):
    rng = random.Random(13)
    for _ in range(12):
        ps, pools, profile = random_instance(rng, profile_name, rng.randint(3, 12))
        result = pack(ps, pools, profile, solver_budget=0.1, strict=False)
        assert violations(result, ps, pools, profile) == []
        assert result.lower_bound <= result.hosts_used <= result.greedy_hosts
        plain = pack(ps, pools, profile, solver_budget=0, strict=False)
        assert plain.hosts_used == result.greedy_hosts and violations(plain, ps, pools, profile) == []


def test_the_bound_is_never_above_a_proven_optimum():
    rng = random.Random(29)
    proven = 0
    for _ in range(25):
        ps, pools, profile = random_instance(rng, rng.choice(["efficient", "balanced", "secure"]), rng.randint(2, 8))
        result = pack(ps, pools, profile, solver_budget=5, strict=False)
        placed = [i for h in result.hosts for i in h.items]
        assert lower_bound(placed, pools, profile) <= result.hosts_used
        if result.optimal:
            proven += 1
            assert result.lower_bound == result.hosts_used
    assert proven >= 20  # CP-SAT proves these small instances; the bound must sit at or under each optimum


def test_same_input_same_assignment():
    rng = random.Random(5)
    ps, pools, profile = random_instance(rng, "balanced", 12)
    first = pack(ps, pools, profile, strict=False).to_dict()
    assert all(pack(ps, pools, profile, strict=False).to_dict() == first for _ in range(3))
    assert pack(list(reversed(ps)), pools, profile, strict=False).to_dict() == first


def test_identical_replicas_in_bulk_reach_the_bound():
    # the 600-byte stack of issue 10: ten workloads of 1,000 spread replicas on a 10,000-host pool
    pools = (HostPool("p", cpu="32", memory="128Gi", count=10000),)
    ws = [Workload(name=f"w{i}", image="x", resources=Resources("500m", "1Gi"), replicas=1000, trust="trusted")
          for i in range(10)]
    ps = [place_workload(w, PROFILES["balanced"], pools) for w in ws]
    result = pack(ps, pools, PROFILES["balanced"])
    assert result.hosts_used == result.lower_bound == 1000
    assert len(items_of(ps)) == sum(len(h.items) for h in result.hosts) == 10000
    assert violations(result, ps, pools, PROFILES["balanced"]) == []


def tight_instance(rng: random.Random, profile_name: str):
    """The issue's hard case: 4 CPU / 8Gi hosts, 20-38 replicas of mixed CPU- and memory-heavy workloads."""
    pools = (HostPool("t", cpu="4", memory="8Gi", count=40),)
    out, total, i = [], rng.randint(20, 38), 0
    while total > 0:
        replicas = min(total, rng.randint(1, 4))
        w = Workload(name=f"w{i}", image="x", trust="trusted", tenant=rng.choice(["a", "b"]), replicas=replicas,
                     resources=Resources(rng.choice(["100m", "500m", "1", "1500m", "2"]),
                                         rng.choice(["512Mi", "1Gi", "2Gi", "3Gi", "4Gi"])))
        out.append(place_workload(w, PROFILES[profile_name], pools))
        total, i = total - replicas, i + 1
    return out, pools, PROFILES[profile_name]


@pytest.mark.parametrize("profile_name", ["efficient", "balanced", "secure"])
def test_tight_hosts_solved_exactly_and_legally(profile_name):
    rng = random.Random(41)
    improved = 0
    for n in range(2):
        ps, pools, profile = tight_instance(rng, profile_name)
        result = pack(ps, pools, profile, solver_budget=0.1)
        assert violations(result, ps, pools, profile) == []
        assert result.lower_bound <= result.hosts_used <= result.greedy_hosts
        improved += result.hosts_used < result.greedy_hosts
        if n == 0:  # a time-limited solve too: deterministic time, one worker, fixed seed
            assert pack(ps, pools, profile, solver_budget=0.1).to_dict() == result.to_dict()
    assert improved  # these are the instances where best fit alone strands capacity


@pytest.mark.parametrize("profile_name", ["efficient", "balanced", "secure"])
def test_host_at_a_time_fill_keeps_every_constraint(profile_name):
    # pack() takes the fill only when it wins; whether or not it does, what it builds must be legal
    rng = random.Random(17)
    complete = 0
    for _ in range(15):
        ps, pools, profile = random_instance(rng, profile_name, rng.randint(3, 12))
        inst = _instance(items_of(ps), pools, profile)
        for aim in (2.0, 3.0):
            hosts, ok, _ = _fill_hosts(inst, _sort_keys(inst)[0], aim)
            if ok:  # every replica placed: counts, capacity, pools, tenants and spread all hold
                complete += 1
                assert _violations(inst, hosts) == []
    assert complete >= 10  # the rest ran out of hosts (tenants apart need more), as pack() would report


def test_mixed_stack_lands_near_the_bound():
    # many CPU-heavy and memory-heavy workloads on two host classes: item-at-a-time best fit strands one
    # resource on many hosts; the host-at-a-time fill keeps both busy
    rng = random.Random(3)
    pools = (HostPool("c", cpu="32", memory="128Gi", count=500), HostPool("m", cpu="16", memory="128Gi", count=500))
    ws = [Workload(name=f"w{i}", image="x", trust="trusted", replicas=rng.randint(1, 4),
                   resources=Resources(*rng.choice([(f"{rng.choice([100, 500, 1000])}m", "256Mi"),
                                                    (f"{rng.choice([2000, 4000])}m", "2Gi"),
                                                    ("500m", f"{rng.choice([8, 16, 24])}Gi")])))
          for i in range(300)]
    ps = [place_workload(w, PROFILES["efficient"], pools) for w in ws]
    result = pack(ps, pools, PROFILES["efficient"])
    plain = pack(ps, pools, PROFILES["efficient"], solver_budget=0)
    assert violations(result, ps, pools, PROFILES["efficient"]) == []
    assert result.hosts_used <= 1.03 * result.lower_bound < plain.hosts_used
