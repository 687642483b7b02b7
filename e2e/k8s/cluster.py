"""Start, reuse and stop the Kubernetes cluster the e2e tests run against, and write its kubeconfig.

Providers: `kind` (a real kind cluster from the node image e2e/kind builds locally, no registry: the default of
the e2e suite) and `local` (real etcd/kube-apiserver/controller-manager/scheduler built by build.sh, run by
kwokctl's binary runtime, with kwok faking many nodes of both architectures: the scale and fake-node tests).
Each provider keeps its own kubeconfig, so both can run at once.
`auto`: the provider whose cluster runs (kind first); else kind when its tool and node image are already built
(e2e/kind/cluster.sh prepare, which the test command's setup runs), else local (no Docker needed).
Usage: python3 e2e/k8s/cluster.py up|down|stop|start|status|kubeconfig [--provider auto|local|kind] [--workers N]
                                   [--kubevirt]
(--workers: kind only, a control-plane and N worker nodes; see e2e/kind/cluster.sh)
(--kubevirt: kind only, real KubeVirt built from source (e2e/kubevirt/build.sh, install.sh) instead of the
schema-only CRDs every other cluster gets; `up` returns when the KubeVirt CR is Available)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("HYBRIDORCH_CACHE") or Path.home() / ".cache" / "hybridorch")
CLUSTER_NAME = "hybridorch-e2e"
STATE = Path(os.environ.get("HYBRIDORCH_K8S_STATE") or CACHE / "k8s" / "cluster")
KUBECONFIG = STATE / "kubeconfig"
# the kind cluster: the same name and kubeconfig as e2e/kind/cluster.sh uses by default (and the same overrides)
KIND_NAME = os.environ.get("HYBRIDORCH_KIND_CLUSTER") or CLUSTER_NAME
KIND_KUBECONFIG = Path(os.environ.get("HYBRIDORCH_KIND_KUBECONFIG") or CACHE / "kind" / "kubeconfig")
KIND_SCRIPT = HERE.parent / "kind" / "cluster.sh"
KUBEVIRT_DIR = HERE.parent / "kubevirt"
LABEL_VIRTUALIZATION = "hybridorch.dev/virtualization"

# The fake hosts: (name, arch, hardware virtualisation, cpu, memory). Both architectures, with and without
# KVM, so every placement (container, sandboxed, vm, nested, emulated) has somewhere to schedule.
NODES: tuple[tuple[str, str, bool, str, str], ...] = (
    ("amd64-kvm-0", "amd64", True, "16", "64Gi"),
    ("amd64-kvm-1", "amd64", True, "16", "64Gi"),
    ("amd64-0", "amd64", False, "8", "32Gi"),
    ("arm64-kvm-0", "arm64", True, "16", "64Gi"),
    ("arm64-0", "arm64", False, "8", "32Gi"),
)


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def bin_dir() -> Path:
    out = subprocess.run(["bash", str(HERE / "build.sh"), "--print-dir"], check=True, capture_output=True,
                         text=True).stdout.strip()
    return Path(out)


def kubectl_path() -> str:
    built = bin_dir() / "kubectl"
    return str(built) if built.exists() else (shutil.which("kubectl") or "kubectl")


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 120,
            kubeconfig: Path = KUBECONFIG) -> subprocess.CompletedProcess[str]:
    cmd = [kubectl_path(), f"--kubeconfig={kubeconfig}", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"[cluster] error: {' '.join(args[:3])}: {proc.stderr.strip()}")
    return proc


def api_ready(kubeconfig: Path = KUBECONFIG) -> bool:
    if not kubeconfig.exists():
        return False
    try:
        proc = kubectl("get", "--raw=/readyz", "--request-timeout=5s", check=False, timeout=15, kubeconfig=kubeconfig)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"[cluster] error: {' '.join(cmd[:4])} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")


# --- local provider: kwokctl binary runtime over our own builds ------------------------------------------

def kwok_env() -> dict[str, str]:
    env = dict(os.environ)
    env["KWOK_WORKDIR"] = str(STATE / "kwok")
    version = bin_dir().parent.name  # .../k8s/VERSION/bin
    env["KWOK_KUBE_VERSION"] = version
    return env


KWOKCTL_CONFIG = """apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  # the machine is shared: etcd and the API server listen on loopback only
  bindAddress: 127.0.0.1
  # a restarted kwok waits out its predecessor's node leases before faking pods: keep them short
  nodeLeaseDurationSeconds: 4
"""


# kwok's fake kubelet serves container logs from a file; every fake container "prints" these lines, so
# `kubectl logs` (apiserver -> node proxy -> kwok) works end to end. The content is fake, the path is real.
FAKE_LOG = STATE / "fake-container.log"
FAKE_LOG_LINES = ("fake container started by kwok", "kwok serves this file as every container's log")
CLUSTER_LOGS = """---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: hybridorch-e2e-fake-logs
spec:
  logs:
    - logsFile: {path}
      follow: false
"""


def kwokctl(*args: str, timeout: float = 600) -> None:
    config = STATE / "kwokctl.yaml"
    STATE.mkdir(parents=True, exist_ok=True)
    # CRI log format, as a kubelet writes it: time, stream, P(artial)/F(ull), text
    FAKE_LOG.write_text("".join(f"2026-01-01T00:00:0{i}.000000000Z stdout F {line}\n"
                                for i, line in enumerate(FAKE_LOG_LINES)))
    config.write_text(KWOKCTL_CONFIG + CLUSTER_LOGS.format(path=json.dumps(str(FAKE_LOG))))
    run([str(bin_dir() / "kwokctl"), "--name", CLUSTER_NAME, "--config", str(config), *args], env=kwok_env(),
        timeout=timeout)


def release_node_leases() -> None:
    """A restarted kwok controller has a new identity and would wait out its predecessor's node leases
    before faking pods again; the predecessor is gone, so its leases can go too."""
    kubectl("delete", "leases", "-n", "kube-node-lease", "--all", "--wait=false")


def wait_kwok(timeout: float = 90) -> None:
    """Wait until kwok holds every fake node's lease again: only then does it fake pods on them (a kwok
    started before the API server retries with a backoff of up to 16 s)."""
    deadline = time.monotonic() + timeout
    wanted = {f"lease.coordination.k8s.io/{n[0]}" for n in NODES}
    while not wanted <= set(kubectl("get", "leases", "-n", "kube-node-lease", "-o", "name").stdout.split()):
        if time.monotonic() > deadline:
            raise SystemExit(f"[cluster] error: kwok did not take the fake nodes' leases within {timeout:.0f}s")
        time.sleep(0.5)


def local_up() -> None:
    subprocess.run(["bash", str(HERE / "build.sh")], check=True)
    b = bin_dir()
    if (STATE / "kwok" / "clusters" / CLUSTER_NAME).exists():
        log("starting the existing cluster")
        # stop first: components left over from a killed run would be taken for running ones
        kwokctl("stop", "cluster")
        kwokctl("start", "cluster", "--timeout", "120s")
        wait_api()
        release_node_leases()
    else:
        STATE.mkdir(parents=True, exist_ok=True)
        log(f"creating cluster {CLUSTER_NAME} from {b}")
        kwokctl("create", "cluster", "--runtime", "binary",
                "--kube-apiserver-binary", str(b / "kube-apiserver"),
                "--kube-controller-manager-binary", str(b / "kube-controller-manager"),
                "--kube-scheduler-binary", str(b / "kube-scheduler"),
                "--etcd-binary", str(b / "etcd"),
                "--kwok-controller-binary", str(b / "kwok"),
                # one instance each: leader election would only make a restarted one wait out the old lease
                "--extra-args", "kube-controller-manager=leader-elect=false",
                "--extra-args", "kube-scheduler=leader-elect=false",
                "--kubeconfig", str(KUBECONFIG), "--wait", "120s", "--quiet-pull")


def local_down() -> None:
    if (STATE / "kwok" / "clusters" / CLUSTER_NAME).exists() and (bin_dir() / "kwokctl").exists():
        kwokctl("delete", "cluster", "--kubeconfig", str(KUBECONFIG))


# --- kind provider -----------------------------------------------------------------------------------------

def kind_binary() -> Path:
    return CACHE / "bin" / "kind"   # installed there by e2e/kind/cluster.sh prepare


def kind_running() -> bool:
    if not kind_binary().exists():
        return False
    proc = subprocess.run([str(kind_binary()), "get", "clusters"], capture_output=True, text=True)
    return KIND_NAME in proc.stdout.split()


def kind_prepared() -> bool:
    """kind and the locally built node image exist, so `up` only creates the cluster (no builds)."""
    if not kind_binary().exists() or not shutil.which("docker"):
        return False
    image = subprocess.run(["bash", str(KIND_SCRIPT), "image"], capture_output=True, text=True).stdout.strip()
    return bool(image) and subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def kind_up(workers: int = 0) -> None:
    """A real kind cluster from the node image e2e/kind builds locally (no registry): e2e/kind/cluster.sh,
    with `workers` worker nodes beside the control-plane (0: the one-node cluster).
    Nodes are not labelled hybridorch.dev/virtualization: the node image has no sandbox runtime (kata needs
    KVM, which these hosts' guests lack), so a labelled node would only attract pods it cannot start."""
    KIND_KUBECONFIG.parent.mkdir(parents=True, exist_ok=True)
    if kind_running():
        # reuse without e2e/kind/cluster.sh's prepare step: nothing to build for a cluster that already runs
        log(f"kind cluster {KIND_NAME} already running; kubeconfig {KIND_KUBECONFIG}")
        run([str(kind_binary()), "export", "kubeconfig", "--name", KIND_NAME, "--kubeconfig", str(KIND_KUBECONFIG)])
        kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=180s", timeout=200,
                kubeconfig=KIND_KUBECONFIG)
        return
    # no --workers for the one-node cluster: e2e/kind/cluster.sh's own default, exactly as before
    extra = ["--workers", str(workers)] if workers else []
    subprocess.run(["bash", str(KIND_SCRIPT), "up", "--name", KIND_NAME, "--kubeconfig", str(KIND_KUBECONFIG), *extra],
                   check=True)


def kind_down() -> None:
    subprocess.run(["bash", str(KIND_SCRIPT), "down", "--name", KIND_NAME, "--kubeconfig", str(KIND_KUBECONFIG)],
                   check=True)


# --- what every provider gets -------------------------------------------------------------------------

def install_kubevirt_crds(kubeconfig: Path = KUBECONFIG) -> None:
    """CRDs made from the KubeVirt schema the package ships: the cluster checks VMs against what render does.
    Offline there are no KubeVirt controllers: VMs are accepted objects, never booted."""
    sys.path.insert(0, str(HERE))
    from kubevirt_crds import SHIPPED, convert  # noqa: E402 (a sibling script, not a package)

    crds = convert(json.loads(SHIPPED.read_text()))
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=hybridorch-e2e", "-f", "-",
            stdin=json.dumps(crds), kubeconfig=kubeconfig)
    names = [f"crd/{c['metadata']['name']}" for c in crds["items"]]
    # a CRD created a moment ago may have no status.conditions yet, which `kubectl wait` reports as an error
    # instead of waiting: wait for the conditions to exist first
    deadline = time.monotonic() + 60
    for name in names:
        while time.monotonic() < deadline:   # past it, the wait below reports why
            found = kubectl("get", name, "-o", "jsonpath={.status.conditions[*].type}", kubeconfig=kubeconfig,
                            check=False)
            if "Established" in found.stdout.split():
                break
            time.sleep(0.2)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, kubeconfig=kubeconfig)


def kubevirt_installed(kubeconfig: Path) -> bool:
    """A KubeVirt CR exists: the real KubeVirt runs (or is being installed) here, so its CRDs are not ours."""
    return kubectl("get", "kubevirts.kubevirt.io", "-A", "-o", "name", kubeconfig=kubeconfig,
                   check=False).stdout.strip() != ""


def install_kubevirt(kubeconfig: Path) -> None:
    """Real KubeVirt on the kind cluster: build it (cached: a second run takes well under a second), then load,
    render and apply it and wait for the KubeVirt CR to be Available (install.sh; about 2 min the first time)."""
    for step in (["build.sh"], ["install.sh", str(kubeconfig)]):
        proc = subprocess.run(["bash", str(KUBEVIRT_DIR / step[0]), *step[1:]],
                              env={**os.environ, "HYBRIDORCH_KIND_CLUSTER": KIND_NAME}, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"[cluster] error: e2e/kubevirt/{step[0]} failed (exit {proc.returncode})")


def node_object(name: str, arch: str, kvm: bool, cpu: str, memory: str) -> dict[str, Any]:
    labels = {"kubernetes.io/arch": arch, "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
              "type": "kwok"}
    if kvm:
        labels[LABEL_VIRTUALIZATION] = "true"
    # ephemeral-storage like a real kubelet reports it: pods request it (templates/kubernetes/workload.yaml.j2)
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
            "status": {"allocatable": resources, "capacity": resources,
                       "nodeInfo": {"architecture": arch, "operatingSystem": "linux", "kubeletVersion": "fake",
                                    "kubeProxyVersion": "fake", "osImage": "kwok fake node",
                                    "kernelVersion": "fake", "containerRuntimeVersion": "fake",
                                    "machineID": name, "systemUUID": name, "bootID": name}}}


def add_fake_nodes() -> None:
    existing = set(kubectl("get", "nodes", "-o", "name").stdout.split())
    missing = [node_object(*n) for n in NODES if f"node/{n[0]}" not in existing]
    if missing:
        kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": missing}))
    kubectl("wait", "--for=condition=Ready", "--timeout=60s", *[f"node/{n[0]}" for n in NODES])
    wait_kwok()


def wait_api(timeout: float = 120, kubeconfig: Path = KUBECONFIG) -> None:
    deadline = time.monotonic() + timeout
    while not api_ready(kubeconfig):
        if time.monotonic() > deadline:
            raise SystemExit(f"[cluster] error: API server not ready after {timeout:.0f}s")
        time.sleep(0.5)
    # the default service account appears once the controller-manager runs; pods need its namespace ready
    while kubectl("get", "serviceaccount", "default", "-n", "default", check=False,
                  kubeconfig=kubeconfig).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("[cluster] error: kube-controller-manager did not create the default service account")
        time.sleep(0.5)


def provider_of(choice: str) -> str:
    if choice != "auto":
        return choice
    if kind_running():
        return "kind"
    if api_ready(KUBECONFIG):
        return "local"
    # kind is what the suite and the README's users run; kwok only where kind is not built (it needs no Docker)
    return "kind" if kind_prepared() else "local"


def kubeconfig_of(provider: str) -> Path:
    return KIND_KUBECONFIG if provider == "kind" else KUBECONFIG


def up(provider: str, workers: int = 0, kubevirt: bool = False) -> None:
    start = time.monotonic()
    provider = provider_of(provider)
    if (workers or kubevirt) and provider != "kind":
        raise SystemExit(f"[cluster] error: --workers and --kubevirt need the kind provider, not {provider}")
    kubeconfig = kubeconfig_of(provider)
    if provider == "kind":
        kind_up(workers)   # creates the cluster, or re-exports the kubeconfig of the running one
    elif api_ready(kubeconfig):
        log(f"cluster already running ({provider}); kubeconfig {kubeconfig}")
    else:
        local_up()
    wait_api(kubeconfig=kubeconfig)
    if kubevirt:
        install_kubevirt(kubeconfig)
    elif not kubevirt_installed(kubeconfig):   # the stubs would break a real KubeVirt
        install_kubevirt_crds(kubeconfig)
    if provider == "local":
        add_fake_nodes()
    log(f"{provider} cluster ready in {time.monotonic() - start:.1f}s: export KUBECONFIG={kubeconfig}")


def down(provider: str) -> None:
    provider = provider_of(provider)
    if provider == "kind":
        kind_down()
    else:
        local_down()
        shutil.rmtree(STATE, ignore_errors=True)
    log(f"{provider} cluster removed")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "stop", "start", "status", "kubeconfig"])
    parser.add_argument("--provider", choices=["auto", "local", "kind"],
                        default=os.environ.get("HYBRIDORCH_K8S_PROVIDER", "auto"))
    parser.add_argument("--workers", type=int, default=0,
                        help="up, kind only: worker nodes beside the control-plane (default 0: one node)")
    parser.add_argument("--kubevirt", action="store_true",
                        help="up, kind only: install real KubeVirt (built from source) and wait until Available")
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.provider, args.workers, args.kubevirt)
    elif args.command == "down":
        down(args.provider)
    elif args.command in ("stop", "start"):
        # stop/start keep the cluster's state (etcd data); only the local provider supports it
        if provider_of(args.provider) != "local":
            raise SystemExit("[cluster] error: stop/start need the local provider")
        kwokctl(args.command, "cluster")
        if args.command == "start":
            wait_api()
            release_node_leases()
            wait_kwok()
    elif args.command == "status":
        ready = api_ready(kubeconfig_of(provider_of(args.provider)))
        print("running" if ready else "stopped")
        return 0 if ready else 1
    else:
        print(kubeconfig_of(provider_of(args.provider)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
