"""Apply-to-ready of the shop's container workloads on a real kind cluster: `hybridorch apply` (render, image check
and load, server-side dry run, apply, prune, watch until ready) against plain `kubectl apply --server-side -k` of
the same rendered manifests followed by `kubectl rollout status` of every Deployment (the baseline).

Usage: python3 benchmarks/kind_apply.py [RUNS]   (the cluster: e2e/cluster.sh up --provider kind; KUBECONFIG, when
set, names another kind cluster)
The images are loaded once before timing, so both sides start from the same node.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
PREFIX = "bench-"


def run(*cmd: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}...: {proc.stderr.strip()[-800:]}")
    return proc


def main() -> None:
    kubeconfig = subprocess.run(["bash", str(ROOT / "e2e" / "kind" / "cluster.sh"), "kubeconfig"],
                                capture_output=True, text=True).stdout.strip()
    kubectl = str(Path(subprocess.run(["bash", str(ROOT / "e2e" / "k8s" / "build.sh"), "--print-dir"],
                                      capture_output=True, text=True).stdout.strip()) / "kubectl")
    env = {**os.environ, "KUBECONFIG": os.environ.get("KUBECONFIG") or kubeconfig, "HYBRIDORCH_KUBECTL": kubectl}
    shop = yaml.safe_load((ROOT / "examples" / "shop.yaml").read_text())
    # the container workloads: the sandboxed plugin needs a sandbox runtime, the VM a KubeVirt controller
    shop["spec"]["workloads"] = [w for w in shop["spec"]["workloads"] if w["name"] in ("web", "api", "payments")]
    for w in shop["spec"]["workloads"]:
        w["resources"]["cpu"] = "50m"   # the node is this 2-core machine, half of it taken by the control plane
    hy = [sys.executable, "-m", "hybridorch"]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "shop.yaml"
        stack.write_text(yaml.safe_dump(shop))
        out = Path(tmp) / "rendered"
        run(*hy, "render", str(stack), "--namespace-prefix", PREFIX, "--out", str(out), env=env)
        deployments = [(d["metadata"]["namespace"], d["metadata"]["name"])
                       for f in sorted((out / "workloads").glob("*.yaml"))
                       for d in yaml.safe_load_all(f.read_text()) if d and d["kind"] == "Deployment"]
        namespaces = sorted({ns for ns, _ in deployments})

        def clean() -> None:
            run(*hy, "delete", str(stack), "--delete-data", env=env)
            subprocess.run([kubectl, "delete", "namespace", *namespaces, "--ignore-not-found", "--wait=true"],
                           capture_output=True, env=env, timeout=300)

        def hybridorch_apply() -> float:
            t0 = time.perf_counter()
            run(*hy, "apply", str(stack), "--namespace-prefix", PREFIX, "--timeout", "300", env=env)
            return time.perf_counter() - t0

        def kubectl_apply() -> float:
            t0 = time.perf_counter()
            run(kubectl, "apply", "--server-side", "--field-manager=bench", "-k", str(out), env=env)
            for ns, name in deployments:
                run(kubectl, "rollout", "status", f"deployment/{name}", "-n", ns, "--timeout=300s", env=env)
            return time.perf_counter() - t0

        clean()
        hybridorch_apply()   # warm-up: builds and loads the image into the node
        clean()
        ours, theirs = [], []
        for _ in range(RUNS):
            ours.append(hybridorch_apply())
            clean()
            theirs.append(kubectl_apply())
            clean()
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{'apply-to-ready, shop containers (3 workloads, 4 pods)':55} {'median s':>9} {'runs':>5}")
    print(f"{'kubectl apply --server-side -k + rollout status':55} {b:9.2f} {RUNS:5d}")
    print(f"{'hybridorch apply (dry run, apply, prune, watch)':55} {a:9.2f} {RUNS:5d}")
    print(f"ratio hybridorch / kubectl: {a / b:.2f}  (runs: ours {', '.join(f'{x:.1f}' for x in ours)}; "
          f"kubectl {', '.join(f'{x:.1f}' for x in theirs)})")


if __name__ == "__main__":
    main()
