"""End-to-end tests on a kind cluster running real KubeVirt (e2e/conftest.py `kubevirt_cluster`: KubeVirt v1.9.0
built from source offline by e2e/kubevirt/build.sh, installed with TCG by e2e/kubevirt/install.sh): the VMs
hybridorch renders boot. The shop's ledger-vm (its own Debian disk, a containerDisk that ships its kernel) gets
Ready when the guest's service answers, applies its cloud-init user data, is reached through its Service by its
tenant and by an allowFrom tenant only, logs its serial console, is listed by `ps` and removed by `delete` and `gc`
with its virt-launcher pod; a nested workload's inner containers run in the busybox guest; what cannot run says
why in one line.

The cluster is planned with e2e/kubevirt/hosts.yaml (one amd64 node, no usable KVM: VMs run under TCG) and the
shop's requests are scaled to the 2-CPU node, as e2e/test_kind.py does.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from e2e.conftest import ROOT, error_lines, hybridorch, kubectl, progress_lines
from e2e.test_kind import probe_until, run_client

pytestmark = pytest.mark.e2e

HOSTS = str(ROOT / "e2e" / "kubevirt" / "hosts.yaml")
SHOP = ROOT / "examples" / "shop.yaml"
PREFIX = "kv-"
GVISOR_POLICY = {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "gvisor"},
                 "spec": {"base": "balanced", "sandboxRuntimeClass": "gvisor"}}


def hyb(env: dict[str, str], *args: str, **kw: Any) -> Any:
    """hybridorch planned for the KubeVirt kind cluster (--hosts e2e/kubevirt/hosts.yaml)."""
    return hybridorch("--hosts", HOSTS, *args, env=env, **kw)


def write_stack(directory: Path, stack: dict[str, Any], name: str = "stack.yaml") -> str:
    (directory / "gvisor.yaml").write_text(yaml.safe_dump(GVISOR_POLICY))
    path = directory / name
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return str(path)


def kv_shop(directory: Path) -> str:
    """examples/shop.yaml for a 2-CPU node that also runs KubeVirt: containers at 50m, one web replica (one node),
    the ledger at 400m (TCG is CPU-bound; its limit is its request), the plugin under gVisor (the node has runsc,
    no Kata), and the ledger's port open to tenant shop too (allowFrom)."""
    stack = yaml.safe_load(SHOP.read_text())
    stack["spec"]["policy"] = "gvisor.yaml"
    for w in stack["spec"]["workloads"]:
        w["resources"]["cpu"] = "50m"
        w.pop("replicas", None)
        if w["name"] == "ledger-vm":
            w["resources"]["cpu"] = "400m"
            w["ports"] = [{"port": 8091, "allowFrom": ["shop"]}]
            w["vm"]["userData"] = USER_DATA
    return write_stack(directory, stack, "shop.yaml")


# cloud-init's own modules on the ledger's first boot (KubeVirt's cloudInitNoCloud seed): a file put in place, a
# command run, a user made; the ledger serves /srv/ledger
TOKEN = "kubevirt-cloud-init-7f3a"
USER_DATA = f"""#cloud-config
users:
  - {{name: auditor, shell: /bin/sh}}
write_files:
  - {{path: /srv/ledger/token.txt, content: "{TOKEN}\\n", permissions: "0644"}}
runcmd:
  - [sh, -c, "id auditor > /srv/ledger/user.txt; cat /etc/hostname > /srv/ledger/runcmd.txt"]
"""


@pytest.fixture(scope="module")
def kv(kubevirt_cluster: dict[str, str]) -> dict[str, str]:
    """The KubeVirt cluster's env (its own HOME and KUBECONFIG), with the real cache: the busybox guests that
    nested VMs boot are fetched there by the test command's setup."""
    return {**kubevirt_cluster, "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")}


@pytest.fixture(scope="module")
def shop(kv: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
         cluster_timings: dict[str, float]) -> Iterator[dict[str, Any]]:
    """The shop applied and waited for: every workload ready, the ledger's guest answering its readiness probe."""
    path = kv_shop(tmp_path_factory.mktemp("kv-shop"))
    t0 = time.monotonic()
    result = hyb(kv, "apply", path, "--namespace-prefix", PREFIX, "--timeout", "600", timeout=900)
    cluster_timings["kubevirt: shop apply to ready"] = time.monotonic() - t0
    yield {"apply": result, "path": path}
    hyb(kv, "delete", path, "--namespace-prefix", PREFIX, check=False, timeout=300)


def vm_objects(env: dict[str, str], resource: str, namespace: str) -> list[dict[str, Any]]:
    return json.loads(kubectl(env, "get", resource, "-n", namespace, "-o", "json").stdout)["items"]


def test_kubevirt_runs_from_the_images_built_here_with_emulation(kv: dict[str, str]) -> None:
    (cr,) = json.loads(kubectl(kv, "get", "kubevirts.kubevirt.io", "-A", "-o", "json").stdout)["items"]
    assert cr["status"]["phase"] == "Deployed"
    assert cr["spec"]["configuration"]["developerConfiguration"]["useEmulation"] is True
    images = {c["image"] for p in vm_objects(kv, "pods", "kubevirt") for c in p["spec"]["containers"]}
    assert {i.rsplit(":", 1)[0].rsplit("/", 1)[1] for i in images} >= {
        "virt-operator", "virt-api", "virt-controller", "virt-handler"}, images
    assert all(i.startswith("hybridorch.local/kubevirt/") for i in images), images


NESTED = {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "e2e-kv-nested"},
          "spec": {"workloads": [{
              "name": "board", "runtime": "nested", "resources": {"cpu": "300m", "memory": "384Mi"},
              "trust": "trusted", "tenant": "rig", "containers": [
                  {"name": "sensor-daemon", "image": "busybox",
                   "command": ["sh", "-c", "echo sensor up on $(uname -m); sleep 3600"]},
                  {"name": "telemetry", "image": "busybox", "ports": [9000],
                   "command": ["sh", "-c", "mkdir -p /www && echo telemetry on $(uname -m) > /www/index.html && "
                                           "httpd -f -p 9000 -h /www"]}]},
              # soc-rig's build cache beside the board (its image also serves as the probing client)
              {"name": "build-cache", "image": "hybridorch.local/httpd:1", "ports": [8080], "trust": "trusted",
               "tenant": "rig", "resources": {"cpu": "50m", "memory": "64Mi"}}]}}


def test_a_nested_workload_runs_its_inner_containers_in_a_guest_on_kubevirt(kv: dict[str, str], tmp_path: Path,
                                                                           cluster_timings: dict[str, float]) -> None:
    """soc-rig's shape on amd64 (the node's arch). No disk of its own: the busybox guest the local target boots (its
    initramfs, the inner containers under runc), built into a kernelBoot image and loaded into the node; ready
    when the inner telemetry port answers. Runs before the shop is applied: the 2-CPU node holds one of them."""
    path = write_stack(tmp_path, NESTED)
    namespace = PREFIX + "rig"
    try:
        t0 = time.monotonic()
        result = hyb(kv, "apply", path, "--namespace-prefix", PREFIX, "--timeout", "300", timeout=400)
        cluster_timings["kubevirt: nested apply to ready"] = time.monotonic() - t0
        lines = progress_lines(result.stderr)
        assert any(re.search(r"\] image hybridorch\.local/guest-e2e-kv-nested-board:\w+: (built|loaded)", x)
                   for x in lines), lines
        assert any("] board: ready" in x for x in lines), result.stderr
        (vmi,) = vm_objects(kv, "virtualmachineinstances.kubevirt.io", namespace)
        assert "hyb.net=dhcp" in vmi["spec"]["domain"]["firmware"]["kernelBoot"]["kernelArgs"]
        assert not vmi["spec"].get("volumes")   # the initramfs is the root: no disk
        # the inner containers' output on the guest's serial console, through the API server
        deadline = time.monotonic() + 60
        while "[sensor-daemon] sensor up on x86_64" not in (
                console := hyb(kv, "logs", path, "board", "--target", "kubernetes").stdout):
            assert time.monotonic() < deadline, console[-3000:]
            time.sleep(2)
        assert "@@HYB READY" in console
        # the inner telemetry container's port answers through the VM's Service, inside its tenant
        page = run_client(kv, namespace, "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 board 9000")
        assert "200 OK" in page and "telemetry on x86_64" in page, page
    finally:
        hyb(kv, "delete", path, "--namespace-prefix", PREFIX, check=False, timeout=300)
    assert kubectl(kv, "get", "namespace", namespace, check=False).returncode != 0


def test_the_ledger_vm_boots_its_own_disk_and_is_ready_when_its_guest_serves(kv: dict[str, str],
                                                                           shop: dict[str, Any]) -> None:
    lines = progress_lines(shop["apply"].stderr)
    assert any(re.search(r"\] image hybridorch\.local/ledger-disk:1-\w+: loaded", x) for x in lines), lines
    ready = [x for x in lines if "] ledger-vm: ready" in x]
    assert ready, shop["apply"].stderr
    status = {s["name"]: s for s in json.loads(hyb(kv, "status", shop["path"], "--target", "kubernetes", "-o",
                                                   "json").stdout)}
    assert all(s["state"] == "ready" for s in status.values()), status
    assert status["ledger-vm"]["objects"] == ["VirtualMachine/ledger-vm"]
    (vmi,) = vm_objects(kv, "virtualmachineinstances.kubevirt.io", PREFIX + "payments")
    assert vmi["status"]["phase"] == "Running"
    # ready is the guest's own service answering: the probe is on the VMI, KubeVirt hands it to the launcher pod
    assert vmi["spec"]["readinessProbe"]["tcpSocket"]["port"] == 8091
    assert {c["type"]: c["status"] for c in vmi["status"]["conditions"]}["Ready"] == "True"
    boot = vmi["spec"]["domain"]["firmware"]["kernelBoot"]
    assert boot["container"]["image"].startswith("hybridorch.local/ledger-disk:1-")
    (pod,) = [p for p in vm_objects(kv, "pods", PREFIX + "payments")
              if p["metadata"]["name"].startswith("virt-launcher-ledger-vm-")]
    assert pod["metadata"]["labels"]["hybridorch.dev/workload"] == "ledger-vm"
    # the serial console through the API server: the guest's kernel, then the ledger's own line
    console = hyb(kv, "logs", shop["path"], "ledger-vm", "--target", "kubernetes").stdout
    assert "Linux version" in console and "ledger: serving on :8091 (Debian GNU/Linux 12 (bookworm)" in console, \
        console[-3000:]


def test_the_vm_service_answers_its_tenant_and_allowfrom_while_policies_keep_others_out(
        kv: dict[str, str], shop: dict[str, Any]) -> None:
    get = "printf 'GET /{} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 ledger-vm 8091"
    page = run_client(kv, PREFIX + "payments", "; ".join(get.format(f) for f in ("", "token.txt", "user.txt",
                                                                                  "runcmd.txt")))
    assert "200 OK" in page and "hybridorch ledger disk" in page and "host: ledger-vm" in page, page
    # the user data took effect through cloud-init on KubeVirt's seed: write_files, users, runcmd
    assert TOKEN in page and "uid=" in page and "(auditor)" in page and "ledger-vm\n" in page, page
    target = [(f"ledger-vm.{PREFIX}payments", 8091)]
    opened, closed = [f"{target[0][0]}:8091 open"], [f"{target[0][0]}:8091 closed"]
    # tenant shop may connect (allowFrom); a namespace hybridorch did not make may not ...
    assert probe_until(kv, PREFIX + "shop", target, opened) == opened
    outsider = "kv-outsider"
    kubectl(kv, "create", "namespace", outsider, check=False)
    restored = True
    try:
        assert probe_until(kv, outsider, target, closed) == closed
        # ... because of payments' policies, which hold for the virt-launcher pod: without them it gets through
        restored = False
        kubectl(kv, "delete", "networkpolicy", "--all", "-n", PREFIX + "payments")
        assert probe_until(kv, outsider, target, opened) == opened
        hyb(kv, "apply", shop["path"], "--namespace-prefix", PREFIX, "--no-wait")
        restored = True
        assert probe_until(kv, outsider, target, closed) == closed
    finally:
        if not restored:
            hyb(kv, "apply", shop["path"], "--namespace-prefix", PREFIX, "--no-wait", check=False)
        kubectl(kv, "delete", "namespace", outsider, "--wait=false", check=False)


def test_snapshot_on_this_cluster_says_in_one_line_what_it_lacks(kv: dict[str, str], shop: dict[str, Any]) -> None:
    # a containerDisk is reset at every boot and kind's host-path storage has no CSI snapshots: KubeVirt would
    # "succeed" with a snapshot that holds no disk, so hybridorch refuses and says why
    result = hyb(kv, "snapshot", "create", shop["path"], "ledger-vm", "before", "--target", "kubernetes",
                 "--namespace-prefix", PREFIX, check=False)
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    assert "has no disk KubeVirt can snapshot" in line and "the cluster lacks CDI" in line, line
    assert not vm_objects(kv, "virtualmachinesnapshots.snapshot.kubevirt.io", PREFIX + "payments")


def small_vm(name: str, **extra: Any) -> dict[str, Any]:
    vm = {"name": name, "runtime": "vm", "ports": [8091], "resources": {"cpu": "100m", "memory": "256Mi"},
          "trust": "internal", "tenant": "lim", "vm": {"disk": {"image": "hybridorch.local/ledger-disk:1"}}}
    return {**vm, **extra}


def test_what_cannot_boot_says_why_in_one_line(kv: dict[str, str], tmp_path: Path) -> None:
    """An arm64 VM on this amd64-only cluster: unschedulable, with the scheduler's words and why. A Windows VM
    whose boot disk (a PVC) does not exist stays applied, not booted, and says so."""
    stack = {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "e2e-kv-limits"},
             "spec": {"workloads": [
                 small_vm("armvm", arch="arm64"),
                 {"name": "winvm", "os": "windows", "ports": [3389], "resources": {"cpu": "100m", "memory": "512Mi"},
                  "trust": "internal", "tenant": "lim", "vm": {"disk": {"pvc": "win-disk"}}}]}}
    path = write_stack(tmp_path, stack)
    try:
        result = hyb(kv, "apply", path, "--namespace-prefix", PREFIX, "--timeout", "120", check=False)
        assert result.returncode != 0
        (line,) = error_lines(result.stderr)
        assert "didn't match Pod's node affinity/selector" in line or "PVC" in line, line
        status = {s["name"]: s for s in json.loads(hyb(kv, "status", path, "--target", "kubernetes", "-o",
                                                       "json").stdout)}
        arm, win = status["armvm"], status["winvm"]
        assert arm["state"] == "failed" and "ErrorUnschedulable" in arm["detail"], arm
        assert "own architecture, arm64" in arm["detail"] and "\n" not in arm["detail"], arm
        assert win["state"] == "failed" and f"PVC {PREFIX}lim/win-disk does not exist" in win["detail"], win
        # applied, not booted: the objects stay for the user to fix
        assert {v["metadata"]["name"] for v in vm_objects(kv, "virtualmachines.kubevirt.io", PREFIX + "lim")} == \
            {"armvm", "winvm"}
    finally:
        hyb(kv, "delete", path, "--namespace-prefix", PREFIX, check=False, timeout=300)


def test_a_disk_image_that_cannot_reach_kind_is_refused_before_apply(kv: dict[str, str], tmp_path: Path) -> None:
    stack = {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "e2e-kv-nodisk"},
             "spec": {"workloads": [small_vm("lost", vm={"disk": {"image": "hybridorch.local/no-such-disk:1"}})]}}
    path = write_stack(tmp_path, stack)
    result = hyb(kv, "apply", path, "--namespace-prefix", PREFIX, check=False)
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    assert "hybridorch.local/no-such-disk:1" in line, line
    assert kubectl(kv, "get", "namespace", PREFIX + "lim", check=False).returncode != 0   # nothing applied


def test_ps_lists_a_vm_and_gc_removes_it_with_its_launcher_pod_once_expired(kv: dict[str, str],
                                                                           tmp_path: Path) -> None:
    stack = {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack",
             "metadata": {"name": "e2e-kv-gc", "ttl": "1s"}, "spec": {"workloads": [small_vm("forgotten")]}}
    path = write_stack(tmp_path, stack)
    namespace = PREFIX + "lim"
    try:
        hyb(kv, "apply", path, "--namespace-prefix", PREFIX, "--no-wait")
        deadline = time.monotonic() + 120
        while not [p for p in vm_objects(kv, "pods", namespace) if p["metadata"]["name"].startswith("virt-launcher")]:
            assert time.monotonic() < deadline, "no virt-launcher pod for the VM"
            time.sleep(1)
        ps = json.loads(hybridorch("ps", "--target", "kubernetes", "-o", "json", env=kv).stdout)
        (mine,) = [x for x in ps if x.get("stack") == "e2e-kv-gc"]
        assert (mine["kind"], mine["workload"], mine["runtime"]) == ("VirtualMachine", "forgotten", "vm"), mine
        time.sleep(1.5)
        gc = hybridorch("gc", "--target", "kubernetes", env=kv)
        assert "forgotten" in gc.stdout + gc.stderr, gc.stdout + gc.stderr
        assert not vm_objects(kv, "virtualmachines.kubevirt.io", namespace)
        assert not vm_objects(kv, "virtualmachineinstances.kubevirt.io", namespace)
        assert not [p for p in vm_objects(kv, "pods", namespace) if p["metadata"]["name"].startswith("virt-launcher")]
    finally:
        hyb(kv, "delete", path, "--namespace-prefix", PREFIX, check=False, timeout=300)


def test_delete_removes_the_vm_its_instance_and_its_launcher_pod(kv: dict[str, str], shop: dict[str, Any]) -> None:
    # runs last in this module: the shop goes
    result = hyb(kv, "delete", shop["path"], "--namespace-prefix", PREFIX, timeout=300)
    assert "VirtualMachine" in result.stdout + result.stderr
    for ns in (PREFIX + "payments", PREFIX + "shop"):
        assert kubectl(kv, "get", "namespace", ns, check=False).returncode != 0, ns
    left = json.loads(kubectl(kv, "get", "virtualmachines.kubevirt.io,virtualmachineinstances.kubevirt.io,pods", "-A",
                              "-l", "hybridorch.dev/stack=shop", "-o", "json").stdout)["items"]
    assert left == [], [o["metadata"]["name"] for o in left]
