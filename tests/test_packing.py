"""Packing: best-fit decreasing onto host pools, with headroom, tenant separation, spreading and a lower bound."""
from __future__ import annotations

import pytest

from hybridorch.errors import PolicyError
from hybridorch.packing import pack
from hybridorch.policy import PROFILES, make_profile, place_workload
from hybridorch.spec import HostPool, Resources, Workload

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
    assert result.hosts_used == result.lower_bound == 2
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


def test_too_big_and_out_of_hosts_are_errors():
    with pytest.raises(PolicyError, match="more than a host"):
        pack(placements(("8", "1Gi", 1, "a")), POOL, PROFILES["efficient"])
    small = (HostPool("p", cpu="1", memory="1Gi", count=1),)
    with pytest.raises(PolicyError, match="ran out of hosts"):
        pack(placements(("1", "1Gi", 2, "a"), pools=small), small, PROFILES["efficient"])


def test_disjoint_pools_are_bounded_separately():
    pools = (HostPool("lin", cpu="4", memory="8Gi"), HostPool("win", os="windows", cpu="4", memory="8Gi"))
    ws = [Workload(name="l", image="x", resources=Resources("1", "1Gi"), trust="trusted"),
          Workload(name="w", image="x", os="windows", resources=Resources("1", "1Gi"), trust="trusted")]
    ps = [place_workload(w, PROFILES["efficient"], pools) for w in ws]
    result = pack(ps, pools, PROFILES["efficient"])
    assert result.hosts_used == result.lower_bound == 2
    assert {h.pool for h in result.hosts} == {"lin", "win"}


def test_packing_is_deterministic():
    ps = placements(*[("300m", "200Mi", 2, t) for t in "abcab"])
    assert pack(ps, POOL, PROFILES["efficient"]).to_dict() == pack(list(reversed(ps)), POOL,
                                                                    PROFILES["efficient"]).to_dict()
