"""hybridorch's packing against kube-scheduler v1.34 on fake kwok nodes (issue 13). Prints numbers, asserts nothing.

The same pods and capacities on both sides: N replicas drawn from a generated stack (the request mix of
benchmarks/packing.py, amd64 containers, policy `efficient`: no spread, no headroom), one host class of
32 CPU / 128Gi. hybridorch packs them with its default solver budget; kube-scheduler gets the kwok nodes of
that class that the naive baseline (first fit in spec order) needs, plus 20% (a cluster has some room; without
it no scorer could use more nodes than first fit), and places the same pods twice:
  default        the default profile (NodeResourcesFit LeastAllocated + BalancedAllocation: it spreads)
  MostAllocated  the default profile with NodeResourcesFit's scoringStrategy MostAllocated (bin packing)
Counted: distinct nodes used, pods left unschedulable, and the scheduler's time from its start to the last
bind (from its own log's timestamps; its start-up, about a second, is included).

The cluster is a separate instance started with e2e/cluster.sh in a temporary state directory (its own etcd,
API server, controller-manager, scheduler and kwok on random loopback ports), so the e2e tests' cluster is
not touched. A second kube-scheduler process with both profiles (their own schedulerNames) is started for each
run after its pods exist, and stopped after it. Everything is removed at the end (also on Ctrl-C).

    python3 benchmarks/kube_scheduler.py [--sizes 100,1000,5000] [--qps 50] [--extra 20]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hybridorch.core.packing import _capacity, pack  # noqa: E402
from hybridorch.core.policy import PROFILES, Placement, place_workload  # noqa: E402
from hybridorch.core.spec import HostPool, Resources, Workload  # noqa: E402
from packing import first_fit, workload_size  # noqa: E402  (shared with benchmarks/packing.py)

POOL = HostPool("c32", cpu="32", memory="128Gi", count=100000)
PROFILE = PROFILES["efficient"]
RUN_LABEL = "hybridorch.dev/bench-run"
SCHEDULERS = {"default": "hybridorch-bench-default", "MostAllocated": "hybridorch-bench-most-allocated"}
BOUND = re.compile(r'^I(\d{4}) (\d\d:\d\d:\d\d\.\d{6}).*"Successfully bound pod to node" pod="([^"]+)" node="([^"]+)"')


def stack(replicas: int, seed: int) -> list[Placement]:
    """Workloads with 1-4 replicas each until `replicas` are reached: mostly small services, some large and some
    memory-heavy ones (the mix of benchmarks/packing.py, all amd64 containers)."""
    rng = random.Random(seed)
    out, left, i = [], replicas, 0
    while left > 0:
        cpu, mem = workload_size(rng)
        n = min(left, rng.choice([1, 1, 2, 2, 3, 4]))
        w = Workload(name=f"w{i}", image="x", trust="trusted", resources=Resources(f"{cpu}m", f"{mem}Mi"),
                     replicas=n)
        out.append(place_workload(w, PROFILE, (POOL,)))
        left, i = left - n, i + 1
    return out


# --- the cluster --------------------------------------------------------------------------------------------

class Cluster:
    """A private e2e cluster instance (e2e/cluster.sh with its own state directory) and kubectl against it."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="hybridorch-kube-bench-"))
        self.env = dict(os.environ, HYBRIDORCH_K8S_STATE=str(self.state / "cluster"),
                        HYBRIDORCH_K8S_PROVIDER="local")
        self.bin = Path(subprocess.run(["bash", str(ROOT / "e2e/k8s/build.sh"), "--print-dir"], check=True,
                                       capture_output=True, text=True).stdout.strip())
        self.kubeconfig = self.state / "cluster" / "kubeconfig"
        self.scheduler: subprocess.Popen[bytes] | None = None

    def up(self) -> None:
        for attempt in range(2):  # `up` can lose a race with the CRD controller on a fresh cluster: once more
            proc = subprocess.run(["bash", str(ROOT / "e2e/cluster.sh"), "up"], env=self.env, capture_output=True,
                                  text=True)
            if proc.returncode == 0:
                break
        else:
            raise SystemExit(f"e2e/cluster.sh up: {(proc.stderr or proc.stdout).strip()[-1500:]}")

    def down(self) -> None:
        self.stop_scheduler()
        if (self.state / "cluster").exists():
            subprocess.run(["bash", str(ROOT / "e2e/cluster.sh"), "down"], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.state, ignore_errors=True)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run([str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                              capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args[:3])}: {proc.stderr.strip()[-1500:]}")
        return proc.stdout

    def start_scheduler(self, qps: int, log: Path) -> float:
        """A second kube-scheduler with one profile per scoring; returns its start time (epoch seconds)."""
        cfg = self.state / "scheduler.yaml"
        cfg.write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "leaderElection": {"leaderElect": False},
            "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": qps, "burst": 2 * qps},
            "profiles": [
                {"schedulerName": SCHEDULERS["default"]},
                {"schedulerName": SCHEDULERS["MostAllocated"],
                 "pluginConfig": [{"name": "NodeResourcesFit", "args": {"scoringStrategy": {
                     "type": "MostAllocated",
                     "resources": [{"name": "cpu", "weight": 1}, {"name": "memory", "weight": 1}]}}}]},
            ]}))
        start = time.time()
        with log.open("wb") as out:
            self.scheduler = subprocess.Popen(
                [str(self.bin / "kube-scheduler"), f"--config={cfg}", "--secure-port=0", "-v=2"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return start

    def stop_scheduler(self) -> None:
        if self.scheduler is not None and self.scheduler.poll() is None:
            self.scheduler.send_signal(signal.SIGTERM)
            try:
                self.scheduler.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.scheduler.kill()
                self.scheduler.wait()
        self.scheduler = None


def node(name: str, run: str, cpu_millis: int, memory_bytes: int) -> dict[str, Any]:
    resources = {"cpu": f"{cpu_millis}m", "memory": str(memory_bytes), "pods": "10000"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {RUN_LABEL: run, "kubernetes.io/hostname": name, "type": "kwok",
                                                  "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"},
                         "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
            "status": {"allocatable": resources, "capacity": resources}}


def pod(name: str, ns: str, run: str, scheduler: str, cpu_millis: int, memory_bytes: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"schedulerName": scheduler, "nodeSelector": {RUN_LABEL: run},
                     "terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "fake", "resources": {
                         "requests": {"cpu": f"{cpu_millis}m", "memory": str(memory_bytes)}}}]}}


def klog_time(mmdd: str, hms: str) -> float:
    year = dt.datetime.now(dt.timezone.utc).year
    t = dt.datetime.strptime(f"{year}{mmdd} {hms}", "%Y%m%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def schedule(cluster: Cluster, ps: list[Placement], nodes: int, scoring: str, run: str,
             qps: int) -> tuple[int, int, float]:
    """Place every replica of ps with kube-scheduler on `nodes` fresh kwok nodes: (nodes used, unschedulable,
    seconds from the scheduler's start to its last bind)."""
    cap_c, cap_m = _capacity(POOL, PROFILE)
    names = [f"{run}-{i}" for i in range(nodes)]
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [node(n, run, cap_c, cap_m) for n in names]}))
    cluster.kubectl("wait", "--for=condition=Ready", "--timeout=120s", "-l", f"{RUN_LABEL}={run}", "node")
    ns = run
    cluster.kubectl("create", "namespace", ns)
    while not cluster.kubectl("get", "serviceaccount", "default", "-n", ns, "-o", "name", check=False):
        time.sleep(0.2)
    pods = [pod(f"{p.name}-{r}", ns, run, SCHEDULERS[scoring], p.cpu_millis, p.memory_bytes)
            for p in ps for r in range(p.workload.replicas)]
    # the scheduler is not running yet: nothing is placed while the pods are created (four kubectl at a time)
    chunks = [json.dumps({"apiVersion": "v1", "kind": "List", "items": pods[i:i + 250]})
              for i in range(0, len(pods), 250)]
    with ThreadPoolExecutor(4) as creators:
        list(creators.map(lambda chunk: cluster.kubectl("create", "-f", "-", stdin=chunk), chunks))
    log = cluster.state / f"scheduler-{run}.log"
    started = cluster.start_scheduler(qps, log)
    deadline = time.monotonic() + 600
    try:
        while True:
            time.sleep(1.0)
            if cluster.scheduler is None or cluster.scheduler.poll() is not None:
                raise SystemExit(f"kube-scheduler exited: {log.read_text(errors='replace').strip()[-1500:]}")
            lines = cluster.kubectl("get", "pods", "-n", ns, "--chunk-size=2000", "-o",
                                    'jsonpath={range .items[*]}{.spec.nodeName}|{.status.conditions[?(@.type=='
                                    '"PodScheduled")].reason}{"\\n"}{end}').splitlines()
            bound = [line.split("|")[0] for line in lines if line.split("|")[0]]
            unschedulable = sum(1 for line in lines if line == "|Unschedulable")
            if len(bound) + unschedulable >= len(pods) or time.monotonic() > deadline:
                break
    finally:
        cluster.stop_scheduler()
    binds = [klog_time(m[1], m[2]) for m in (BOUND.match(line) for line in log.read_text(errors="replace")
                                                .splitlines()) if m]
    seconds = (max(binds) - started) if binds else float("nan")
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    cluster.kubectl("delete", "node", "-l", f"{RUN_LABEL}={run}", "--wait=false")
    return len(set(bound)), unschedulable, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="replica counts, comma-separated")
    parser.add_argument("--qps", type=int, default=50,
                        help="kube-scheduler's API client rate (50 is its default; burst is twice this)")
    parser.add_argument("--extra", type=int, default=20,
                        help="nodes offered beyond what first fit needs, in percent (at least 2 more)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    cluster = Cluster()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        t0 = time.monotonic()
        cluster.up()
        print(f"private cluster up in {time.monotonic() - t0:.1f} s (kube-scheduler v1.34, kwok nodes of 32 CPU / "
              f"128Gi, policy efficient, scheduler client qps {args.qps})")
        print(f"{'replicas':>8} {'bound':>5} {'ff':>4} {'offered':>7} | {'hybridorch':>10} {'s':>5} | "
              f"{'default':>7} {'x':>5} {'s':>6} | {'MostAlloc':>9} {'x':>5} {'s':>6} | {'unsched d/m':>11}")
        for n in sizes:
            ps = stack(n, seed=n)
            t = time.perf_counter()
            ours = pack(ps, (POOL,), PROFILE)
            t_ours = time.perf_counter() - t
            naive = first_fit(ps, (POOL,), PROFILE)
            offered = naive + max(2, naive * args.extra // 100)
            # pods of all runs but the current one are gone or going: fresh nodes, a fresh namespace per run
            d_nodes, d_un, d_s = schedule(cluster, ps, offered, "default", f"d{n}", args.qps)
            m_nodes, m_un, m_s = schedule(cluster, ps, offered, "MostAllocated", f"m{n}", args.qps)
            h = ours.hosts_used
            print(f"{n:>8} {ours.lower_bound:>5} {naive:>4} {offered:>7} | {h:>10} {t_ours:5.2f} | {d_nodes:>7} "
                  f"{d_nodes / h:5.2f} {d_s:6.1f} | {m_nodes:>9} {m_nodes / h:5.2f} {m_s:6.1f} | "
                  f"{d_un:>5}/{m_un:<5}", flush=True)
        print("x: kube-scheduler's nodes over hybridorch's hosts; ff: hosts first fit in spec order needs; offered: "
              "kwok nodes given to kube-scheduler;\ns: hybridorch's pack() wall time, kube-scheduler's start to its "
              f"last bind (one API request each, at {args.qps}/s: --qps; 50 is kube-scheduler's default)")
    finally:
        cluster.down()


if __name__ == "__main__":
    main()
