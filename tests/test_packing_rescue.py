"""Packing never refuses a stack that fits: when best-fit decreasing runs out of a pool's hosts, the other orders
and the exact solver (CP-SAT) get the budget first; a refusal says whether it is proven or the budget ran out."""
from __future__ import annotations

import random

import pytest

from hybridorch.core.packing import _greedy, _instance, _sort_keys, items_of, pack, violations
from hybridorch.core.policy import PROFILES, place_workload
from hybridorch.core.spec import HostPool, Resources, Workload
from hybridorch.errors import PolicyError

PROFILE = PROFILES["efficient"]   # no headroom: host capacity is exactly the pool's


def stack(cpus: list[str], count: int, cpu: str = "10", replicas: int = 1, tenants: int = 1,
          profile: str = "efficient") -> tuple[list, tuple[HostPool, ...]]:
    pools = (HostPool("p", cpu=cpu, memory="64Gi", count=count),)
    ws = [Workload(name=f"w{i}", image="x", resources=Resources(c, "1Gi"), trust="trusted", replicas=replicas,
                   tenant=f"t{i % tenants}") for i, c in enumerate(cpus)]
    return [place_workload(w, PROFILES[profile], pools) for w in ws], pools


def triples(hosts: int, seed: int = 1) -> list[str]:
    """Replicas that fill `hosts` hosts of 1 CPU exactly, three per host, shuffled."""
    rng = random.Random(seed)
    sizes = []
    for _ in range(hosts):
        a, b = rng.randint(250, 400), rng.randint(250, 400)
        sizes += [a, b, 1000 - a - b]
    rng.shuffle(sizes)
    return [f"{s}m" for s in sizes]


def best_fit_alone_fails(ps: list, pools: tuple[HostPool, ...], profile: str = "efficient") -> bool:
    inst = _instance(items_of(ps), pools, PROFILES[profile])
    return bool(_greedy(inst, _sort_keys(inst)[0], False, 0)[1])


# 3 replicas per host, every host full: best fit puts the two 4-CPU replicas together and strands the 3s
FITS = [
    ("two hosts, 4+3+3 each", ["4", "4", "3", "3", "3", "3"], 2, "10", 2.0),
    ("three hosts, 4+3+3 each", ["4", "4", "4", "3", "3", "3", "3", "3", "3"], 3, "10", 2.0),
    ("budget 0 still looks for a packing that fits", ["4", "4", "3", "3", "3", "3"], 2, "10", 0.0),
    # one 4, one 3 and one 2 per 9-CPU host on 30 hosts: too many hosts for CP-SAT's default budget, and every
    # greedy order crowds the 4s; worst fit over every host spreads them first
    ("thirty hosts, 4+3+2 each", ["4", "3", "2"] * 30, 30, "9", 2.0),
    # 5+4 thrice, 4+3+2 seventeen times, 3+3+3 and 3+2+2+2: worst fit strands the 4s, CP-SAT needs ~15x the
    # default budget; filling each host at once behind its largest replica (minimum slack) finds it
    ("22 hosts, mixed", ["5", "5", "5", "3"] + ["4", "3", "2"] * 20, 22, "9", 2.0),
]


@pytest.mark.parametrize("label,cpus,count,cpu,budget", FITS, ids=[f[0] for f in FITS])
def test_a_stack_that_fits_exactly_is_packed_where_best_fit_runs_out(label, cpus, count, cpu, budget):
    ps, pools = stack(cpus, count, cpu)
    assert best_fit_alone_fails(ps, pools)   # the case is one best fit cannot do
    result = pack(ps, pools, PROFILE, solver_budget=budget)
    assert result.hosts_used == count and not result.unplaced
    assert violations(result, ps, pools, PROFILE) == []
    assert "best-fit decreasing ran out of hosts" in result.method
    assert result.optimal and result.lower_bound == count


REFUSED = [
    # label, replicas' CPU, hosts, what the one-line reason says
    ("solver proves it: five 4-CPU replicas, two 10-CPU hosts", ["4"] * 5, 2, 1.0,
     "proven: the exact solver (CP-SAT) showed that no packing fits on the pools' 2 hosts"),
    ("capacity proves it", ["4"] * 6, 2, 1.0, "proven: the replicas need 24000m CPU and the 2 hosts of pool(s) p"),
    ("budget runs out on exact triples", triples(30), 30, 1e-6,
     "not proven: the exact solver (CP-SAT) found no packing within its budget of 1e-06 s "
     "(try a larger --solver-budget)"),
]


@pytest.mark.parametrize("label,cpus,count,budget,reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_refusal_says_whether_it_is_proven_or_the_budget_ran_out(label, cpus, count, budget, reason):
    cpu = "1" if count == 30 else "10"
    ps, pools = stack(cpus, count, cpu)
    with pytest.raises(PolicyError) as err:
        pack(ps, pools, PROFILE, solver_budget=budget)
    message = str(err.value)
    assert "ran out of hosts" in message and reason in message and "\n" not in message
    lenient = pack(ps, pools, PROFILE, solver_budget=budget, strict=False)   # capacity report: listed, not raised
    assert lenient.unplaced and reason in lenient.unplaced[0].reason
    assert violations(lenient, ps, pools, PROFILE) == []


def test_spread_replicas_over_too_few_hosts_are_proven_by_the_bound():
    ps, pools = stack(["100m"], 3, replicas=4, profile="secure")
    with pytest.raises(PolicyError, match="proven: at least 4 hosts are needed on pool\\(s\\) p, which have 3"):
        pack(ps, pools, PROFILES["secure"])


def test_tenants_kept_apart_are_proven_by_the_bound():
    ps, pools = stack(["100m"] * 4, 3, tenants=4, profile="secure")
    with pytest.raises(PolicyError, match="proven: tenants kept apart need at least 4 hosts of pool\\(s\\) p, "
                                          "which have 3"):
        pack(ps, pools, PROFILES["secure"])


def test_the_exact_triples_fit_with_a_budget_and_a_too_big_replica_is_still_refused_at_once():
    ps, pools = stack(triples(4), 4, "1")
    assert best_fit_alone_fails(ps, pools)
    result = pack(ps, pools, PROFILE, solver_budget=2.0)
    assert result.hosts_used == 4 and violations(result, ps, pools, PROFILE) == []
    big, pools = stack(["11", "1"], 5)
    with pytest.raises(PolicyError, match="more than a host"):
        pack(big, pools, PROFILE)


def test_a_refusal_names_a_few_pools_not_thousands():
    pools = tuple(HostPool(f"p{i}", cpu="1", memory="1Gi", count=1) for i in range(50))
    ps = [place_workload(Workload(name="w", image="x", resources=Resources("1", "1Gi"), trust="trusted",
                                  replicas=60), PROFILE, pools)]
    with pytest.raises(PolicyError) as err:
        pack(ps, pools, PROFILE)
    assert "p0, p1, p2, p3, p4 and 45 more" in str(err.value) and "p49" not in str(err.value)
    assert "proven:" in str(err.value)


@pytest.mark.parametrize("profile", ["efficient", "balanced", "secure"])
def test_the_rescue_heuristics_never_break_a_hard_rule(profile):
    """Worst fit and minimum slack, run alone on random stacks under each profile's rules (spread replicas,
    tenants apart, headroom): whatever they call complete has every replica once, on an eligible host within
    capacity and the pools' counts."""
    from hybridorch.core.packing import _min_slack, _violations, _worst_fit

    rng = random.Random(profile)
    for trial in range(40):
        cpus = [f"{rng.choice([250, 500, 750, 1000, 1500, 2000])}m" for _ in range(rng.randint(3, 12))]
        ps, pools = stack(cpus, rng.randint(2, 8), cpu=str(rng.choice([2, 3, 4])), replicas=rng.randint(1, 3),
                          tenants=rng.randint(1, 3), profile=profile)
        inst = _instance(items_of(ps), pools, PROFILES[profile])
        for run in (_worst_fit, _min_slack):
            bins, complete, _ = run(inst, _sort_keys(inst)[0], 10**7)
            if complete:
                assert _violations(inst, bins) == [], (profile, trial, run.__name__)
