"""Benchmark: a VM to ready on KubeVirt, `hybridorch apply` against what a user would do by hand with the same
manifests: `kubectl apply -f` of `hybridorch render --target kubernetes` and `kubectl wait vmi --for
condition=Ready`. The baseline is the hand path; hybridorch adds its checks, image loads, the lease and its own
wait, and the target is a ratio near 1. Both wait for the same thing: KubeVirt's Ready condition, which follows
the readiness probe on the guest's first TCP port (the guest's own service answering).

The VMs: examples/shop.yaml's ledger-vm alone (its Debian disk, a containerDisk that ships its kernel) and a nested
workload (the busybox guest with two inner containers, a kernelBoot image hybridorch builds). Each is deleted and
waited for between runs; images are loaded before the first timed run, so every run is warm.

Run: KUBECONFIG=... python3 benchmarks/kubevirt_vm.py [--runs 2] [--only ledger-vm|nested]
(the e2e KubeVirt kind cluster: HYBRIDORCH_KIND_CLUSTER=hybridorch-kubevirt bash e2e/cluster.sh up --provider kind
--kubevirt)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HOSTS = str(ROOT / "e2e" / "kubevirt" / "hosts.yaml")
KUBECTL = os.environ.get("HYBRIDORCH_KUBECTL", "kubectl")

NESTED = {"name": "board", "runtime": "nested", "resources": {"cpu": "300m", "memory": "384Mi"}, "trust": "trusted",
          "tenant": "bench", "containers": [
              {"name": "sensor", "image": "busybox", "command": ["sh", "-c", "echo sensor up; sleep 3600"]},
              {"name": "telemetry", "image": "busybox", "ports": [9000],
               "command": ["sh", "-c", "mkdir -p /www && uname -m > /www/index.html && httpd -f -p 9000 -h /www"]}]}


def stacks(tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (stack file, VM name): the shop's ledger at 400m (its limit is its request: TCG is CPU-bound)."""
    shop = yaml.safe_load((ROOT / "examples" / "shop.yaml").read_text())
    ledger = next(w for w in shop["spec"]["workloads"] if w["name"] == "ledger-vm")
    ledger["resources"]["cpu"] = "400m"
    out = {}
    for name, w in (("ledger-vm", ledger), ("nested", NESTED)):
        path = tmp / f"bench-kv-{name}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack",
                                        "metadata": {"name": f"bench-kv-{name}"}, "spec": {"workloads": [w]}}))
        out[name] = (str(path), w["name"])
    return out


def run(*cmd: str, stdin: str | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HYBRIDORCH_IMAGES": str(ROOT / "examples" / "images")})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def hybridorch(*args: str) -> str:
    return run(sys.executable, "-m", "hybridorch", "--hosts", HOSTS, *args)


def delete(path: str) -> None:
    hybridorch("delete", path)


def by_hybridorch(path: str) -> float:
    t0 = time.monotonic()
    hybridorch("apply", path, "--timeout", "600")
    return time.monotonic() - t0


def by_hand(path: str, vm: str, namespace: str) -> float:
    manifests = hybridorch("render", path, "--target", "kubernetes")
    t0 = time.monotonic()
    run(KUBECTL, "apply", "-f", "-", stdin=manifests)
    # the VMI appears a moment after the VM: kubectl wait on a missing object fails at once
    while subprocess.run([KUBECTL, "get", "vmi", vm, "-n", namespace], capture_output=True).returncode != 0:
        time.sleep(0.2)
    run(KUBECTL, "wait", "vmi", vm, "-n", namespace, "--for=condition=Ready", "--timeout=600s")
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", choices=["ledger-vm", "nested"], help="one of the two VMs")
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        raise SystemExit("set KUBECONFIG to a cluster running KubeVirt (see this file's docstring)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, vm) in stacks(Path(tmp)).items():
            if args.only and name != args.only:
                continue
            namespace = "bench" if name == "nested" else "payments"
            by_hybridorch(path)   # builds and loads the images: every timed run below is warm
            delete(path)
            hyb, hand = [], []
            for _ in range(args.runs):
                hand.append(by_hand(path, vm, namespace))
                delete(path)
                hyb.append(by_hybridorch(path))
                delete(path)
            h, k = statistics.median(hyb), statistics.median(hand)
            print(f"{name:10s} kubectl apply + wait vmi Ready {k:6.1f}s   hybridorch apply {h:6.1f}s   "
                  f"ratio {h / k:.2f}x   (runs: hand {', '.join(f'{x:.1f}' for x in hand)}; "
                  f"hybridorch {', '.join(f'{x:.1f}' for x in hyb)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
