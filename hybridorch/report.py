"""Human-readable text for plans: a fixed-width table plus the reasons, no dependencies (start-up matters)."""
from __future__ import annotations

from .plan import Plan


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _mi(n: int) -> str:
    return f"{n / 2**30:.1f}Gi" if n >= 2**30 else f"{n // 2**20}Mi"


def plan_table(plan: Plan) -> str:
    rows = [["WORKLOAD", "RUNTIME", "TENANT", "REPLICAS", "HOST", "OVERHEAD", "RULES"]]
    for p in plan.placements:
        host = f"{p.host_os}/{p.host_arch}" + (" (emulated)" if p.emulated else "")
        rows.append([p.name, p.runtime, p.workload.tenant, str(p.workload.replicas), host, str(p.overhead),
                     ",".join(r.rule for r in p.reasons)])
    lines = [f"stack {plan.stack.name} (policy {plan.profile.name})", ""] + _table(rows) + ["", "why:"]
    for p in plan.placements:
        for r in p.reasons:
            lines.append(f"  {p.name}: [{r.rule}] {r.message}")
    pk = plan.packing
    cpu, mem = pk.utilisation()
    lines += ["", f"hosts: {pk.hosts_used} used (lower bound {pk.lower_bound}); "
                  f"allocated CPU {cpu:.0%}, memory {mem:.0%} of the hosts used"]
    for h in pk.hosts:
        lines.append(f"  {h.name}: {h.cpu_used}m/{h.cpu_capacity}m CPU, {_mi(h.memory_used)}/{_mi(h.memory_capacity)}: "
                     + ", ".join(f"{i.workload}/{i.replica}" for i in h.items))
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60}m" if s >= 3600 else f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


def status_table(statuses: list) -> str:
    """Rows of WorkloadStatus (see backends.base) as a fixed-width table."""
    rows = [["WORKLOAD", "RUNTIME", "STATE", "PORTS", "ACCEL", "UPTIME", "DETAIL"]]
    for s in statuses:
        rows.append([s.name, s.runtime, s.state, ",".join(s.ports) or "-", s.accelerator or "-",
                     _age(s.uptime_seconds), s.detail])
    return "\n".join(_table(rows))
