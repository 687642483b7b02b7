"""What `audit` covers and how it reports: every KubeVirt kind that runs a VM gets the VM rules, every container list
of a pod the container rules; a bad quantity is reported at its own key; --output is written whole or not at all;
the external checkers of rendered output (virt-xml-validate, cloud-init) run once for many texts."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridorch.cli import cli
from hybridorch.errors import EXIT_BAD_INPUT, OutputError
from hybridorch.ops.audit import AuditReport
from hybridorch.render import validate
from tests.conftest import ROOT, require

SECRET = "s3cr3t-TOKEN-7f1e"
LABELS = "labels: {hybridorch.dev/owner: a, hybridorch.dev/ttl: 1d}"


def audit(tmp_path: Path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["audit", "--fail-on", "low", "--format", "json", str(path)],
                                catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def rules(out: str) -> set[str]:
    return {f["rule"] for f in json.loads(out)["findings"]}


# --- KubeVirt: the VM rules wherever a VirtualMachineInstance spec is written --------------------------------

def _domain_under(path: str, domain: str, extra: str = "") -> str:
    """The spec of an object holding a VMI spec at `path` (below `spec`), indented as YAML."""
    lines, indent = [], "  "
    for part in path.split(".")[1:]:
        lines.append(f"{indent}{part}:")
        indent += "  "
    lines.append(f"{indent}domain: {domain}")
    lines += [f"{indent}{x}" for x in extra.splitlines() if x]
    return "\n".join(lines) + "\n"


KUBEVIRT = {
    "VirtualMachineInstance": ("kubevirt.io/v1", "spec"),
    "VirtualMachine": ("kubevirt.io/v1", "spec.template.spec"),
    "VirtualMachineInstanceReplicaSet": ("kubevirt.io/v1", "spec.template.spec"),
    "VirtualMachinePool": ("pool.kubevirt.io/v1alpha1", "spec.virtualMachineTemplate.spec.template.spec"),
}
DOMAINS = [
    ("cores over the ceiling", "{cpu: {cores: 64}, memory: {guest: 1Gi}}", "", "HYB002"),
    ("no limits", "{devices: {}}", "", "HYB001"),
    ("virtiofs", "{cpu: {cores: 1}, memory: {guest: 1Gi}, devices: {filesystems: [{name: s, virtiofs: {}}]}}", "",
     "HYB003"),
    ("host disk", "{cpu: {cores: 1}, memory: {guest: 1Gi}}", "volumes: [{name: d, hostDisk: {path: /x}}]", "HYB003"),
    ("host devices", "{cpu: {cores: 1}, memory: {guest: 1Gi}, devices: {gpus: [{name: g, deviceName: nv}]}}", "",
     "HYB008"),
    ("guest agent", "{cpu: {cores: 1}, memory: {guest: 1Gi}}",
     "accessCredentials: [{sshPublicKey: {propagationMethod: {qemuGuestAgent: {}}}}]", "HYB004"),
]


@pytest.mark.parametrize("kind", list(KUBEVIRT))
@pytest.mark.parametrize("name,domain,extra,rule", DOMAINS, ids=[d[0] for d in DOMAINS])
def test_every_kubevirt_kind_gets_the_vm_rules(kind: str, name: str, domain: str, extra: str, rule: str,
                                               tmp_path: Path) -> None:
    api, at = KUBEVIRT[kind]
    text = f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: v, namespace: n, {LABELS}}}\nspec:\n" \
        + _domain_under(at, domain, extra)
    code, out, err = audit(tmp_path, text)
    assert code == 1 and rule in rules(out), (out, err)


@pytest.mark.parametrize("kind", list(KUBEVIRT))
def test_a_domain_that_is_text_is_one_line_at_its_path(kind: str, tmp_path: Path) -> None:
    api, at = KUBEVIRT[kind]
    text = f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: v}}\nspec:\n" + _domain_under(at, SECRET)
    code, out, err = audit(tmp_path, text)
    assert code == EXIT_BAD_INPUT and err.count("\n") == 1, err
    assert f"{at}.domain: expected a mapping, found text" in err and SECRET not in out + err


def test_a_pool_reports_a_bad_core_count_at_its_full_path(tmp_path: Path) -> None:
    api, at = KUBEVIRT["VirtualMachinePool"]
    code, _, err = audit(tmp_path, f"apiVersion: {api}\nkind: VirtualMachinePool\nmetadata: {{name: p}}\nspec:\n"
                         + _domain_under(at, "{cpu: {cores: many}}"))
    assert code == EXIT_BAD_INPUT and f"{at}.domain.cpu.cores: expected a whole number of CPUs" in err, err


# --- pods: ephemeral containers are containers ---------------------------------------------------------------

@pytest.mark.parametrize("context,rule", [("{privileged: true}", "HYB005"), ("{capabilities: {add: [SYS_ADMIN]}}",
                                                                              "HYB007")])
def test_ephemeral_containers_get_the_container_rules(context: str, rule: str, tmp_path: Path) -> None:
    code, out, err = audit(tmp_path, "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n}\nspec:\n"
                           f"  ephemeralContainers: [{{name: e, image: x, securityContext: {context}}}]\n"
                           "  containers: [{name: c, image: x, resources: {limits: {cpu: 1, memory: 1Gi}}}]\n")
    assert code == 1 and rule in rules(out), (out, err)


def test_ephemeral_containers_are_read_through_their_shape(tmp_path: Path) -> None:
    code, _, err = audit(tmp_path, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
                         f"  ephemeralContainers: {SECRET}\n  containers: [{{name: c}}]\n")
    assert code == EXIT_BAD_INPUT and "spec.ephemeralContainers: expected a list, found text" in err
    assert SECRET not in err


# --- quantities: each problem at its own key ----------------------------------------------------------------

def _pod_resources(resources: str) -> str:
    return ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n"
            f"      containers:\n        - name: c\n          resources: {resources}\n")


@pytest.mark.parametrize("resources,paths", [
    ("{limits: {cpu: true, memory: false}}", ["resources.limits.cpu", "resources.limits.memory"]),
    ("{limits: {cpu: '1.2.3', memory: 1Gi}}", ["resources.limits.cpu"]),
    ("{requests: {cpu: 1x, memory: .nan}}", ["resources.requests.cpu", "resources.requests.memory"]),
    ("{limits: {cpu: 1, hugepages-2Mi: lots}}", ["resources.limits.hugepages-2Mi"]),
])
def test_a_bad_quantity_is_reported_at_its_key(resources: str, paths: list[str], tmp_path: Path) -> None:
    code, _, err = audit(tmp_path, _pod_resources(resources))
    lines = err.splitlines()
    assert code == EXIT_BAD_INPUT and len(lines) == len(paths) == len(set(lines)), err
    for line, path in zip(lines, paths):
        assert f"spec.template.spec.containers[0].{path}: expected a quantity" in line, err


def test_a_resource_name_of_somebody_else_is_never_quoted(tmp_path: Path) -> None:
    code, _, err = audit(tmp_path, _pod_resources(f"{{limits: {{cpu: 1, example.com/{SECRET}: x, {SECRET}: y}}}}"))
    lines = err.splitlines()
    assert code == EXIT_BAD_INPUT and len(lines) == 2 and SECRET not in err, err
    assert "resources.limits (entry 2): expected a quantity" in lines[0]
    assert "resources.limits (entry 3): expected a quantity" in lines[1]


def test_kubevirt_limits_are_reported_at_their_key(tmp_path: Path) -> None:
    code, _, err = audit(tmp_path, "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: v}\n"
                         "spec:\n  domain: {resources: {limits: {cpu: '1.2.3'}, requests: {memory: []}}}\n")
    assert code == EXIT_BAD_INPUT and "spec.domain.resources.limits.cpu: expected a quantity" in err, err
    assert "spec.domain.resources.requests.memory: expected a quantity such as 500m or 2Gi, found a list" in err


# --- --output: whole or not at all ---------------------------------------------------------------------------

def report() -> AuditReport:
    return AuditReport((), fmt="json")


def run_audit_to(out: str) -> subprocess.CompletedProcess[str]:
    """The real entry point with a timeout: opening a FIFO for writing would block forever (the timeout guards)."""
    return subprocess.run([sys.executable, "-m", "hybridorch", "audit", "--output", out, "examples/insecure.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_fifo_as_output_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "report"
    os.mkfifo(fifo)
    done = run_audit_to(str(fifo))
    assert done.returncode == EXIT_BAD_INPUT and done.stderr == \
        f"error: cannot write the report to {fifo}: it is a FIFO, not a regular file\n"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["report"]


def test_a_device_as_output_is_refused() -> None:
    done = run_audit_to("/dev/full")
    assert done.returncode == EXIT_BAD_INPUT and done.stderr == \
        "error: cannot write the report to /dev/full: it is a device, not a regular file\n"


def test_a_full_disk_leaves_the_previous_report_and_no_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    out = tmp_path / "r.json"
    out.write_text("PREVIOUS")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=f"cannot write the report to {out}: No space left on device"):
        report().write(str(out))
    assert out.read_text() == "PREVIOUS" and os.listdir(tmp_path) == ["r.json"]


def test_a_missing_or_unusable_directory_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="No such file or directory"):
        report().write(str(tmp_path / "no" / "r.json"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="Not a directory"):
        report().write(str(tmp_path / "file" / "r.json"))
    with pytest.raises(OutputError, match="it is a directory"):
        report().write(str(tmp_path))


def test_the_report_replaces_a_file_keeping_its_mode_and_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    report().write(str(link))
    assert link.is_symlink() and json.loads(target.read_text())["findings"] == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.json", "target.json"]


def test_a_new_report_gets_the_umask_mode(tmp_path: Path) -> None:
    mask = os.umask(0o027)
    try:
        report().write(str(tmp_path / "new.json"))
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


# --- the external checkers of rendered output: one run for many texts, verdicts kept --------------------------

DOMAIN = ("<domain type='kvm'><name>d{i}</name><memory>1048576</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
          "</domain>")


def test_many_domains_are_checked_in_one_run_with_the_same_complaints(monkeypatch: pytest.MonkeyPatch) -> None:
    require(validate.libvirt_available(), "virt-xml-validate/xmllint not installed (e2e/packages.txt)")
    good = [DOMAIN.format(i=f"{i}-{os.getpid()}") for i in range(30)]
    bad = ["<domain type='nonsense'><name>x</name></domain>", "<domain"]
    alone = [validate.libvirt_problem(b) for b in bad]
    assert all(alone)
    validate._VERDICTS.clear()
    runs: list[list[str]] = []
    real = validate.proc.run
    monkeypatch.setattr(validate.proc, "run", lambda args, **kw: (runs.append(list(args)), real(args, **kw))[1])
    verdicts = validate.libvirt_problems(good[:10] + [bad[0]] + good[10:] + [bad[1]])
    assert verdicts[:10] == [None] * 10 and verdicts[11:-1] == [None] * 20
    assert [verdicts[10], verdicts[-1]] == alone
    assert validate._domain_schema() is None or len(runs) == 3   # one xmllint run, then each bad one alone
    runs.clear()
    assert validate.libvirt_problems(good) == [None] * 30 and runs == []   # kept by SHA-256 of the text


def test_many_user_data_are_checked_in_one_run_with_the_same_complaints(monkeypatch: pytest.MonkeyPatch) -> None:
    require(validate.cloud_init_available(), "cloud-init not installed (e2e/packages.txt)")
    good = [f"#cloud-config\nhostname: h{i}-{os.getpid()}\npackages: [htop]\n" for i in range(5)]
    bad = ["#cloud-config\npackages: 3\n", "hostname: h\n"]
    alone = [validate.cloud_init_problem(b) for b in bad]
    assert all(alone)
    validate._VERDICTS.clear()
    runs: list[list[str]] = []
    real = validate.proc.run
    monkeypatch.setattr(validate.proc, "run", lambda args, **kw: (runs.append(list(args)), real(args, **kw))[1])
    verdicts = validate.cloud_init_problems([bad[0]] + good + [bad[1], good[0]])
    assert verdicts == [alone[0]] + [None] * 5 + [alone[1], None]
    assert validate._cloud_init_python() is None or len(runs) == 3
