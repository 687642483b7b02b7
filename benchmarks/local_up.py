"""Time from `hybridorch up` to every container of the shop example ready, against starting the same containers
by hand with `docker network create` + `docker run` (the baseline); prints both, and their ratio.

Run: python3 benchmarks/local_up.py [--rounds 3]. Needs a running Docker engine; images are built once first.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STACK = "bench-shop"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_ports(ports: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    if s.recv(12).startswith(b"HTTP/1."):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"port {port} never answered")
            time.sleep(0.05)


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def stack_file(tmp: Path) -> tuple[Path, dict]:
    doc = yaml.safe_load((ROOT / "examples" / "shop.yaml").read_text())
    doc["metadata"]["name"] = STACK
    doc["spec"]["workloads"] = [w for w in doc["spec"]["workloads"] if w.get("runtime") not in ("vm", "nested")]
    for w, host_port in zip(doc["spec"]["workloads"], free_ports(len(doc["spec"]["workloads"]))):
        w["ports"] = [{"port": w["ports"][0], "hostPort": host_port}]
    path = tmp / "shop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, doc


def hybridorch(*args: str) -> None:
    run(sys.executable, "-m", "hybridorch", *args)


def time_hybridorch(path: Path, ports: list[int]) -> float:
    start = time.monotonic()
    hybridorch("up", str(path))          # --wait is the default: returns when every workload is ready
    wait_ports(ports)                    # and confirm from outside, as the baseline does
    return time.monotonic() - start


def time_by_hand(doc: dict, ports: list[int]) -> float:
    """The same containers, networks and limits, started with the docker CLI one after the other."""
    start = time.monotonic()
    tenants = sorted({w["tenant"] for w in doc["spec"]["workloads"]})
    for tenant in tenants:
        run("docker", "network", "create", "--label", "bench=local_up", f"bench-{tenant}")
    for w in doc["spec"]["workloads"]:
        cpu = int(w["resources"]["cpu"].rstrip("m")) / 1000
        for i in range(w.get("replicas", 1)):
            cmd = ["docker", "run", "-d", "--name", f"bench-{w['name']}-{i}", "--label", "bench=local_up",
                   "--network", f"bench-{w['tenant']}", "--network-alias", w["name"], f"--cpus={cpu}",
                   f"--memory={w['resources']['memory'].replace('Mi', 'm')}", "--pids-limit=256",
                   "--security-opt", "no-new-privileges:true", "--cap-drop", "ALL"]
            if i == 0:
                cmd += ["-p", f"127.0.0.1:{w['ports'][0]['hostPort']}:{w['ports'][0]['port']}"]
            for k, v in (w.get("env") or {}).items():
                cmd += ["-e", f"{k}={v}"]
            if w["trust"] == "untrusted":
                cmd += ["--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m,mode=1777"]
            cmd += [w["image"], *w["command"]]
            run(*cmd)
    wait_ports(ports)
    return time.monotonic() - start


def clean_by_hand() -> None:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=bench=local_up"], capture_output=True,
                         text=True, check=True).stdout.split()
    if ids:
        run("docker", "rm", "-f", *ids)
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", "label=bench=local_up"], capture_output=True,
                          text=True, check=True).stdout.split()
    if nets:
        run("docker", "network", "rm", *nets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HYBRIDORCH_IMAGES", str(ROOT / "examples" / "images"))
    with tempfile.TemporaryDirectory() as tmp:
        path, doc = stack_file(Path(tmp))
        ports = [w["ports"][0]["hostPort"] for w in doc["spec"]["workloads"]]
        # warm-up: builds the images and loads the page cache, outside the measurements
        hybridorch("up", str(path))
        hybridorch("down", str(path))
        ours, hand, noop = [], [], []
        for _ in range(args.rounds):
            try:
                ours.append(time_hybridorch(path, ports))
                start = time.monotonic()
                hybridorch("up", str(path))
                noop.append(time.monotonic() - start)
            finally:
                hybridorch("down", str(path))
            try:
                hand.append(time_by_hand(doc, ports))
            finally:
                clean_by_hand()
    containers = sum(w.get("replicas", 1) for w in doc["spec"]["workloads"])
    a, b = statistics.median(ours), statistics.median(hand)
    print(f"shop example, containers only ({containers} containers, 2 tenant networks), median of {args.rounds}:")
    print(f"  hybridorch up --target local (CLI, to all ready): {a:6.2f} s")
    print(f"  docker network create + docker run by hand:       {b:6.2f} s   (baseline)")
    print(f"  ratio hybridorch / baseline:                      {a / b:6.2f}x")
    print(f"  second `up` with nothing changed (no-op):         {statistics.median(noop):6.2f} s")


if __name__ == "__main__":
    main()
