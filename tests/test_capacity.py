"""Capacity: the one-workload-per-server baseline against the packed plan, energy and CO2, the CLI and its plot."""
from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from hybridorch.ops.capacity import HOURS_PER_YEAR, Assumptions, capacity_report
from hybridorch.cli import cli
from hybridorch.errors import PolicyError
from hybridorch.core.plan import build_plan
from hybridorch.core.policy import PROFILES
from hybridorch.core.spec import HostPool, Resources, Stack, Workload

STACK = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {name: estate}
spec:
  policy: efficient
  hosts:
    - {name: rack, cpu: "8", memory: 32Gi, count: 4, idleWatts: 100, peakWatts: 300}
  workloads:
    - {name: web, image: x, trust: trusted, replicas: 3, resources: {cpu: "1", memory: 1Gi}}
    - {name: db, image: x, trust: trusted, resources: {cpu: "2", memory: 4Gi}}
    - {name: huge, image: x, trust: trusted, resources: {cpu: "12", memory: 1Gi}}
"""


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_baseline_and_packed_figures_follow_the_power_model():
    pools = (HostPool("rack", cpu="8", memory="32Gi", count=4, idleWatts=100, peakWatts=300),)
    ws = (Workload(name="web", image="x", trust="trusted", replicas=3, resources=Resources("1", "1Gi")),
          Workload(name="db", image="x", trust="trusted", resources=Resources("2", "4Gi")))
    plan = build_plan(Stack(name="s", file="s.yaml", hosts=pools, workloads=ws), PROFILES["efficient"])
    report = capacity_report(plan, Assumptions(pue=1.5, grid_g_per_kwh=400))
    # baseline: 4 servers at 1/8, 1/8, 1/8 and 2/8 CPU; packed: one server at 5/8
    assert report.baseline.count == 4 and report.packed.count == 1
    baseline_watts = 3 * (100 + 200 * 1 / 8) + (100 + 200 * 2 / 8)
    assert report.baseline.it_watts == pytest.approx(baseline_watts)
    assert report.packed.it_watts == pytest.approx(100 + 200 * 5 / 8)
    assert report.packed.kwh_per_year == pytest.approx((100 + 125) * HOURS_PER_YEAR / 1000 * 1.5)
    assert report.packed.co2_kg_per_year == pytest.approx(report.packed.kwh_per_year * 0.4)
    saved = report.saved()
    assert saved["servers"] == 3 and saved["serversFraction"] == 0.75
    assert 0 < saved["energyFraction"] < 1 and report.default_power_pools == ()


def test_pools_without_power_figures_use_printed_assumptions():
    pools = (HostPool("plain", cpu="8", memory="32Gi"),)
    ws = (Workload(name="web", image="x", trust="trusted", resources=Resources("4", "1Gi")),)
    plan = build_plan(Stack(name="s", file="s.yaml", hosts=pools, workloads=ws), PROFILES["efficient"])
    report = capacity_report(plan, Assumptions(idle_watts=50, peak_watts=150))
    assert report.packed.it_watts == pytest.approx(50 + 100 * 0.5)
    assert report.default_power_pools == ("plain",)
    assert any("50 W idle / 150 W peak" in line for line in report.assumption_lines())
    bad = (HostPool("odd", cpu="8", memory="32Gi", idleWatts=400, peakWatts=300),)
    with pytest.raises(PolicyError, match="idleWatts 400 is above peakWatts 300"):
        capacity_report(build_plan(Stack(name="s", file="s.yaml", hosts=bad, workloads=ws), PROFILES["efficient"]))


def test_cli_table_lists_savings_unfit_and_assumptions(write_stack):
    result = run("capacity", write_stack(STACK))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ONE WORKLOAD PER SERVER" in out and "PACKED" in out
    assert "servers           4                        1" in out
    assert "did not fit:" in out and "huge: 1 replica(s): one replica needs 12000m CPU" in out
    assert "PUE 1.5 (--pue), grid 400 gCO2/kWh (--grid-intensity)" in out
    assert "rack-0" in out and "gap 0%: optimal" in out


def test_cli_json_has_the_assignment_and_every_figure(write_stack):
    result = run("capacity", write_stack(STACK), "-o", "json", "--pue", "1.2", "--grid-intensity", "100")
    data = json.loads(result.output)
    assert data["assumptions"]["pue"] == 1.2 and data["assumptions"]["gridGramsCo2PerKwh"] == 100
    replicas = sorted(r for h in data["packed"]["hosts"] for r in h["replicas"])
    assert replicas == ["db/0", "web/0", "web/1", "web/2"]
    assert data["baseline"]["servers"] == 4 and data["packed"]["servers"] == 1
    for side in ("baseline", "packed"):
        assert {"kwhPerYear", "co2KgPerYear", "itWatts", "cpuUtilisation", "memoryUtilisation"} <= set(data[side])
    assert data["packed"]["co2KgPerYear"] == pytest.approx(data["packed"]["kwhPerYear"] * 0.1, rel=1e-3)
    assert data["unfit"] == [{"workload": "huge", "replicas": 1, "reason": data["unfit"][0]["reason"]}]
    assert data["packing"]["lowerBound"] == 1 and data["packing"]["optimal"] is True


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml")])
def test_cli_plot_writes_a_real_image(write_stack, tmp_path, suffix, magic):
    target = tmp_path / f"estate{suffix}"
    result = run("capacity", write_stack(STACK), "--plot", str(target))
    assert result.exit_code == 0
    data = target.read_bytes()
    assert data.startswith(magic) and len(data) > 10_000
    if suffix == ".svg":
        assert b"<svg" in data and b"servers" in data


def test_cli_plot_needs_png_or_svg(write_stack, tmp_path):
    result = CliRunner().invoke(cli, ["capacity", write_stack(STACK), "--plot", str(tmp_path / "x.jpg")])
    assert result.exit_code == 2
    assert result.output.strip() == f"{tmp_path / 'x.jpg'}: --plot needs a file name ending in .png or .svg"


def test_missing_matplotlib_is_one_line(write_stack, tmp_path, monkeypatch):
    # a fault that cannot be produced for real in this environment (matplotlib is installed): hide the package
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(cli, ["capacity", write_stack(STACK), "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --plot needs matplotlib: pip install 'hybridorch[plot]'"


def test_plan_prints_the_gap(write_stack):
    path = write_stack(STACK.replace("    - {name: huge, image: x, trust: trusted, resources: {cpu: \"12\", memory: 1Gi}}\n",
                                     ""))
    table = run("plan", path).output
    assert "hosts: 1 used (lower bound 1, gap 0%: optimal; best-fit decreasing)" in table
    data = json.loads(run("plan", path, "-o", "json").output)["packing"]
    assert (data["hostsUsed"], data["lowerBound"], data["gap"], data["optimal"]) == (1, 1, 0.0, True)


def test_plan_gap_after_the_solver(write_stack):
    # seven workloads where best fit alone opens a fourth host
    rows = [("2500m", "4Gi"), ("1", "3Gi"), ("1", "1Gi"), ("2", "3Gi"), ("2", "1Gi"), ("2", "1Gi"), ("1", "5Gi")]
    body = "".join(f"    - {{name: w{i}, image: x, trust: trusted, resources: {{cpu: \"{c}\", memory: {m}}}}}\n"
                   for i, (c, m) in enumerate(rows))
    path = write_stack(STACK.split("  workloads:\n")[0].replace('cpu: "8", memory: 32Gi', 'cpu: "4", memory: 8Gi')
                       + "  workloads:\n" + body)
    assert "hosts: 3 used (lower bound 3, gap 0%: optimal; host-at-a-time fill; best-fit decreasing " \
           "alone used 4)" in run("plan", path).output
    plain = run("plan", path, "--solver-budget", "0").output
    assert "hosts: 4 used (lower bound 3, gap at most 33.3%; best-fit decreasing)" in plain
