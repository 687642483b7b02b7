"""Human-readable plans and capacity reports: fixed-width tables, and the capacity figure (matplotlib, imported
only when a figure is asked for: start-up matters)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from hybridorch.errors import HybridorchError
from hybridorch.core.durations import uptime_text
from hybridorch.core.labels import replica_ref
from hybridorch.core.packing import Packing
from hybridorch.core.plan import Plan
from hybridorch.core.text import printable, table

if TYPE_CHECKING:
    from hybridorch.ops.capacity import CapacityReport


def _table(rows: list[list[str]]) -> list[str]:
    return table(rows)   # the one formatter: every cell escaped, one row per line


def _mi(n: int) -> str:
    return f"{n / 2**30:.1f}Gi" if n >= 2**30 else f"{n // 2**20}Mi"


def gap_text(pk: Packing) -> str:
    """The lower bound and how far the packing is from it, saying which step found the packing."""
    how = pk.method if pk.greedy_hosts == pk.hosts_used else f"{pk.method}; best-fit decreasing alone used {pk.greedy_hosts}"
    if pk.optimal:
        return f"lower bound {pk.lower_bound}, gap 0%: optimal; {how}"
    return f"lower bound {pk.lower_bound}, gap at most {pk.gap:.1%}; {how}"


def plan_table(plan: Plan) -> str:
    rows = [["WORKLOAD", "RUNTIME", "TENANT", "REPLICAS", "HOST", "OVERHEAD", "RULES"]]
    for p in plan.placements:
        host = f"{p.host_os}/{p.host_arch}" + (" (emulated)" if p.emulated else "")
        rows.append([p.name, p.runtime, p.workload.tenant, str(p.workload.replicas), host, str(p.overhead),
                     ",".join(r.rule for r in p.reasons)])
    lines = [printable(f"stack {plan.stack.name} (policy {plan.profile.name})"), ""] + _table(rows) + ["", "why:"]
    for p in plan.placements:
        for r in p.reasons:
            lines.append(printable(f"  {p.name}: [{r.rule}] {r.message}"))
    pk = plan.packing
    cpu, mem = pk.utilisation()
    lines += ["", f"hosts: {pk.hosts_used} used ({gap_text(pk)}); "
                  f"allocated CPU {cpu:.0%}, memory {mem:.0%} of the hosts used"]
    for h in pk.hosts:
        lines.append(printable(f"  {h.name}: {h.cpu_used}m/{h.cpu_capacity}m CPU, "
                               f"{_mi(h.memory_used)}/{_mi(h.memory_capacity)}: " + _replicas_text(h.items)))
    return "\n".join(lines)


HOST_REPLICAS_SHOWN = 12   # a host line names this many replicas, then counts the rest (-o json has them all)


def _replicas_text(items: Sequence[Any]) -> str:
    shown = ", ".join(replica_ref(i.workload, i.replica) for i in items[:HOST_REPLICAS_SHOWN])
    rest = len(items) - HOST_REPLICAS_SHOWN
    return shown + (f" and {rest} more replicas" if rest > 0 else "")


def status_table(statuses: list) -> str:
    """Rows of WorkloadStatus (see backends.base) as a fixed-width table."""
    rows = [["WORKLOAD", "RUNTIME", "STATE", "PORTS", "ACCEL", "UPTIME", "DETAIL"]]
    for s in statuses:
        rows.append([s.name, s.runtime, s.state, ",".join(s.ports) or "-", s.accelerator or "-",
                     uptime_text(s.uptime_seconds), s.detail])
    return "\n".join(_table(rows))


def _kwh(x: float) -> str:
    return f"{x / 1000:,.1f} MWh" if abs(x) >= 10_000 else f"{x:,.0f} kWh"


def _kg(x: float) -> str:
    return f"{x / 1000:,.1f} t" if abs(x) >= 10_000 else f"{x:,.0f} kg"


def capacity_table(report: "CapacityReport") -> str:
    b, p, saved = report.baseline, report.packed, report.saved()
    rows = [["", "ONE WORKLOAD PER SERVER", "PACKED", "SAVED"],
            ["servers", str(b.count), str(p.count), f"{saved['servers']} ({saved['serversFraction']:.0%})"],
            ["CPU allocated", f"{b.cpu_utilisation:.0%}", f"{p.cpu_utilisation:.0%}", ""],
            ["memory allocated", f"{b.memory_utilisation:.0%}", f"{p.memory_utilisation:.0%}", ""],
            ["IT power", f"{b.it_watts:,.0f} W", f"{p.it_watts:,.0f} W", f"{b.it_watts - p.it_watts:,.0f} W"],
            ["energy per year", _kwh(b.kwh_per_year), _kwh(p.kwh_per_year),
             f"{_kwh(saved['kwhPerYear'])} ({saved['energyFraction']:.0%})"],
            ["CO2 per year", _kg(b.co2_kg_per_year), _kg(p.co2_kg_per_year), _kg(saved["co2KgPerYear"])]]
    lines = [printable(f"stack {report.stack} (policy {report.policy}): consolidation"), ""] + _table(rows)
    lines += ["", f"packed hosts ({gap_text(report.plan.packing)}):"]
    host_rows = [["HOST", "CPU", "MEMORY", "WATTS", "REPLICAS"]]
    for s in p.servers:
        host_rows.append([s.name, f"{s.cpu_millis}m/{s.cpu_capacity}m ({s.cpu_utilisation:.0%})",
                          f"{_mi(s.memory_bytes)}/{_mi(s.memory_capacity)} ({s.memory_utilisation:.0%})",
                          f"{s.watts:.0f}", ", ".join(s.replicas)])
    lines += ["  " + line for line in _table(host_rows)]
    if report.unfit:
        lines += ["", "did not fit:"]
        lines += [printable(f"  {u.workload}: {u.replicas} replica(s): {u.reason}") for u in report.unfit]
    lines += ["", "assumptions:"] + [printable(f"  {a}") for a in report.assumption_lines()]
    return "\n".join(lines)


class PlotUnavailable(HybridorchError):
    """--plot was asked for but matplotlib (the `plot` extra) is not installed."""

    exit_code = 2


def capacity_figure(report: "CapacityReport", fmt: str) -> bytes:
    """The report drawn for a person: servers and energy before/after, and every packed host's CPU and memory."""
    try:
        import matplotlib
    except ImportError as err:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'hybridorch[plot]'") from err
    import io

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    b, p, saved = report.baseline, report.packed, report.saved()
    fig = plt.figure(figsize=(12, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.25])
    fig.suptitle(f"{report.stack}: {b.count} servers \u2192 {p.count} "
                 f"({saved['serversFraction']:.0%} fewer), energy {saved['energyFraction']:.0%} lower",
                 fontsize=15, fontweight="bold")
    _bars(fig.add_subplot(grid[0, 0]), [b.count, p.count], "servers", [str(b.count), str(p.count)])
    _bars(fig.add_subplot(grid[0, 1]), [b.kwh_per_year / 1000, p.kwh_per_year / 1000],
          f"energy per year, MWh (PUE {report.assumptions.pue:g})",
          [f"{b.kwh_per_year / 1000:,.1f}", f"{p.kwh_per_year / 1000:,.1f}"])
    _bars(fig.add_subplot(grid[0, 2]), [b.co2_kg_per_year / 1000, p.co2_kg_per_year / 1000],
          f"CO\u2082 per year, t ({report.assumptions.grid_g_per_kwh:g} g/kWh)",
          [f"{b.co2_kg_per_year / 1000:,.2f}", f"{p.co2_kg_per_year / 1000:,.2f}"])
    _hosts_panel(fig.add_subplot(grid[1, :]), report)
    if report.unfit:
        fig.text(0.01, 0.005, "did not fit: " + "; ".join(f"{u.workload} ({u.replicas})" for u in report.unfit),
                 fontsize=9, color="#b71c1c")
    out = io.BytesIO()
    fig.savefig(out, format=fmt, dpi=110)
    plt.close(fig)
    return out.getvalue()


def _bars(ax: Any, values: list[float], title: str, text: list[str]) -> None:
    """One before/after pair: one workload per server (grey) against the packing (green)."""
    drawn = ax.bar(["one workload\nper server", "packed"], values, color=["#9e9e9e", "#2e7d32"], width=0.6)
    ax.set_title(title, fontsize=12)
    ax.bar_label(drawn, labels=text, padding=3, fontsize=11)
    ax.set_ylim(0, max(values + [1]) * 1.2)
    ax.spines[["top", "right"]].set_visible(False)


def _hosts_panel(ax: Any, report: "CapacityReport") -> None:
    """Every packed host's CPU and memory, against the headroom kept free and the one-per-server average."""
    b, servers = report.baseline, report.packed.servers
    xs = list(range(len(servers)))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [s.cpu_utilisation * 100 for s in servers], width, label="CPU",
           color="#1565c0")
    ax.bar([x + width / 2 for x in xs], [s.memory_utilisation * 100 for s in servers], width, label="memory",
           color="#ef6c00")
    headroom = report.plan.profile.headroom_percent
    if headroom:
        ax.axhline(100 - headroom, color="#555555", linestyle="--", linewidth=1)
        ax.text(0.995, (100 - headroom + 1.5) / 110, f"{headroom}% headroom kept free", ha="right", fontsize=9,
                color="#555555", transform=ax.transAxes)
    baseline_cpu = b.cpu_utilisation * 100
    ax.axhline(baseline_cpu, color="#616161", linestyle=":", linewidth=1.5)
    ax.text(0.995, (baseline_cpu + 1.5) / 110, f"one workload per server: {baseline_cpu:.0f}% CPU on average",
            ha="right", fontsize=9, color="#424242", transform=ax.transAxes,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if len(servers) <= 16:
        for x, s in zip(xs, servers):
            ax.text(x - width / 2, s.cpu_utilisation * 100 + 1, f"{s.cpu_utilisation:.0%}", ha="center", fontsize=8)
            ax.text(x + width / 2, s.memory_utilisation * 100 + 1, f"{s.memory_utilisation:.0%}", ha="center",
                    fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("allocated, % of the host")
    ax.set_title(f"packed hosts: CPU and memory allocated ({len(servers)} hosts)", fontsize=12)
    if len(servers) <= 40:
        ax.set_xticks(xs, [s.name for s in servers], rotation=45 if len(servers) > 8 else 0, ha="right"
                      if len(servers) > 8 else "center", fontsize=9)
    else:
        ax.set_xlabel("host")
        ax.set_xticks([])
    ax.set_xlim(-0.6, max(len(servers), 6) - 0.4)  # a few hosts keep a readable bar width
    ax.legend(loc="upper left", ncols=2, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
