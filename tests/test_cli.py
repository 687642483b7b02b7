"""The CLI through click's CliRunner: exit codes, output formats, one-line errors, no tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from hybridorch import __version__
from hybridorch.cli import cli
from tests.conftest import ROOT

SHOP = str(ROOT / "examples" / "shop.yaml")


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_version_and_help_on_every_command():
    assert __version__ in run("--version").output
    for command in cli.commands:
        result = run(command, "--help")
        assert result.exit_code == 0, command
        assert "Usage:" in result.output


def test_plan_table_explains_every_workload():
    result = run("plan", SHOP)
    assert result.exit_code == 0
    assert "recommender-plugin  sandboxed" in result.output
    assert "[untrusted-isolation]" in result.output
    assert "hosts: " in result.output and "lower bound" in result.output


def test_plan_json_has_the_documented_shape():
    data = json.loads(run("plan", SHOP, "--output", "json").output)
    assert data["stack"] == "shop"
    runtimes = {p["workload"]: p["runtime"] for p in data["placements"]}
    assert runtimes == {"web": "container", "api": "container", "recommender-plugin": "sandboxed",
                        "payments": "container", "ledger-vm": "vm"}
    assert all(p["reasons"] and p["reasons"][0]["rule"] for p in data["placements"])
    assert data["packing"]["hostsUsed"] >= data["packing"]["lowerBound"] >= 1


def test_plan_yaml_and_policy_override():
    data = yaml.safe_load(run("plan", SHOP, "-o", "yaml", "--policy", "secure").output)
    runtimes = {p["workload"]: p["runtime"] for p in data["placements"]}
    assert runtimes["recommender-plugin"] == "vm" and runtimes["payments"] == "sandboxed"


def test_policy_from_environment_variable():
    data = json.loads(run("plan", SHOP, "-o", "json", env={"HYBRIDORCH_PLAN_POLICY": "secure"}).output)
    assert data["policy"] == "secure"


def test_policy_file(write_stack):
    policy = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Policy
        metadata: {name: strict-shop}
        spec:
          base: balanced
          untrustedRuntime: vm
          overheads: {vm: {cpu: 300m, memory: 512Mi}}
        """, "policy.yaml")
    data = json.loads(run("plan", SHOP, "-o", "json", "--policy", policy).output)
    assert data["policy"] == "strict-shop"
    plugin = next(p for p in data["placements"] if p["workload"] == "recommender-plugin")
    assert plugin["runtime"] == "vm" and plugin["overhead"] == {"cpuMillis": 300, "memoryBytes": 512 * 2**20}


def test_bad_policy_file_is_located(write_stack):
    policy = write_stack("apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\n"
                         "spec: {headroomPercent: 95}\n", "policy.yaml")
    result = run("plan", SHOP, "--policy", policy)
    assert result.exit_code == 2
    assert f"{policy}:4: spec.headroomPercent: must be at most 90" in result.output


def test_unknown_policy_name():
    result = run("plan", SHOP, "--policy", "paranoid")
    assert result.exit_code == 2 and "error: policy 'paranoid' is neither" in result.output


def test_validate_ok_and_errors_from_several_files(write_stack):
    bad = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: demo}
        spec:
          workloads:
            - {name: web, image: x, resources: {cpu: 5 cores}}
        """)
    ok = run("validate", SHOP)
    assert ok.exit_code == 0 and "ok (5 workloads)" in ok.output
    result = run("validate", SHOP, bad)
    assert result.exit_code == 2
    assert result.output.strip() == f"{bad}:6: spec.workloads[0].resources.cpu: not a valid CPU quantity: a " \
                                    "positive number of cores such as 500m or 2"


def test_errors_never_show_a_traceback_but_debug_does(write_stack):
    bad = write_stack("kind: Stack\n")
    result = CliRunner().invoke(cli, ["validate", bad])
    assert result.exit_code == 2 and "Traceback" not in result.output
    debug = CliRunner().invoke(cli, ["--debug", "validate", bad])
    assert debug.exit_code != 0 and debug.exception is not None


def test_schema_and_completion():
    schema = json.loads(run("schema").output)
    assert schema["title"] == "hybridorch Stack"
    assert "_HYBRIDORCH_COMPLETE" in run("completion", "bash").output


@pytest.mark.parametrize("example", ["shop.yaml", "legacy-windows.yaml", "soc-rig.yaml"])
def test_installed_console_script_plans_examples(example):
    # the real entry point in a subprocess: what a user types
    proc = subprocess.run([sys.executable, "-m", "hybridorch", "plan", str(ROOT / "examples" / example)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "why:" in proc.stdout


def test_hosts_file_replaces_spec_hosts_and_moves_arm64_off_emulation():
    soc = str(ROOT / "examples" / "soc-rig.yaml")
    default = json.loads(run("plan", soc, "-o", "json").stdout)
    lab = json.loads(run("--hosts", str(ROOT / "examples" / "hosts-lab.yaml"), "plan", soc, "-o", "json").stdout)
    board = [p for p in default["placements"] if p["workload"] == "board"][0]
    board_lab = [p for p in lab["placements"] if p["workload"] == "board"][0]
    assert board["emulated"] and board["host"]["arch"] == "amd64"
    assert not board_lab["emulated"] and board_lab["host"]["pools"] == ["arm-boards"]


def test_bad_hosts_file_is_located(write_stack):
    hosts = write_stack("apiVersion: hybridorch.dev/v1alpha1\nkind: Hosts\nmetadata: {name: h}\n"
                        "spec:\n  pools:\n    - {name: a, arch: m68k}\n", "hosts.yaml")
    result = run("--hosts", hosts, "plan", SHOP)
    assert result.exit_code == 2
    assert f"{hosts}:6: spec.pools[0].arch: must be one of: amd64, arm64, riscv64" in result.output
