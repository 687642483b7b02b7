"""Time from `hybridorch up` to a local sandboxed workload answering, in its own VM (policy localSandbox: vm) and
under Docker's gVisor runtime when it is registered (localSandbox: runtime), against `docker run` of the same image
under runc by hand (the baseline: what the removed stand-in did). Prints the medians and their ratios.

Run: python3 benchmarks/sandbox_up.py [--rounds 3]. Needs Docker, libvirt and the cached amd64 guest.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from local_up import wait_ports  # benchmarks/ is on sys.path when a benchmark runs as a script

ROOT = Path(__file__).resolve().parent.parent
STACK = "bench-sandbox"
IMAGE = "hybridorch.local/httpd:1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def stack(tmp: Path, local_sandbox: str, port: int) -> Path:
    (tmp / "policy.yaml").write_text(yaml.safe_dump({
        "apiVersion": "hybridorch.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "bench"},
        "spec": {"base": "balanced", "localSandbox": local_sandbox}}))
    path = tmp / "stack.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": STACK},
        "spec": {"policy": "policy.yaml", "workloads": [{
            "name": "plugin", "image": IMAGE, "command": ["httpd", "-f", "-p", "8082", "-h", "/www"],
            "ports": [{"port": 8082, "hostPort": port}], "resources": {"cpu": "250m", "memory": "64Mi"},
            "trust": "untrusted"}]}}))
    return path


def time_up(path: Path, port: int) -> float:
    start = time.monotonic()
    try:
        run(sys.executable, "-m", "hybridorch", "up", str(path))
        wait_ports([port], timeout=300)
        return time.monotonic() - start
    finally:
        run(sys.executable, "-m", "hybridorch", "down", str(path))


def time_by_hand(port: int) -> float:
    start = time.monotonic()
    try:
        run("docker", "run", "-d", "--name", f"{STACK}-hand", "--read-only", "--tmpfs", "/tmp", "--cpus=0.25",
            "--memory=64m", "--cap-drop", "ALL", "-p", f"127.0.0.1:{port}:8082", IMAGE,
            "httpd", "-f", "-p", "8082", "-h", "/www")
        wait_ports([port], timeout=300)
        return time.monotonic() - start
    finally:
        run("docker", "rm", "-f", f"{STACK}-hand")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HYBRIDORCH_IMAGES", str(ROOT / "examples" / "images"))
    runtimes = json.loads(subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], check=True,
                                         capture_output=True, text=True).stdout)
    paths = ["vm"] + (["runtime"] if "runsc" in runtimes else [])
    times: dict[str, list[float]] = {p: [] for p in [*paths, "hand"]}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        for choice in paths:   # warm-up: builds the image, loads the page cache
            time_up(stack(Path(tmp), choice, port), port)
        for _ in range(args.rounds):
            for choice in paths:
                times[choice].append(time_up(stack(Path(tmp), choice, port), port))
            times["hand"].append(time_by_hand(port))
    base = statistics.median(times["hand"])
    print(f"one sandboxed workload (250m, 64Mi) from `up` to answering HTTP, median of {args.rounds}:")
    print(f"  {'docker run by hand, runc (baseline)':<44} {base:6.2f} s")
    labels = {"vm": "hybridorch up, its own VM (localSandbox: vm)", "runtime": "hybridorch up, gVisor (runsc)"}
    for choice in paths:
        m = statistics.median(times[choice])
        print(f"  {labels[choice]:<44} {m:6.2f} s   {m / base:5.1f}x")


if __name__ == "__main__":
    main()
