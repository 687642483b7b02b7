"""Benchmark: boot-to-ready of a local `vm` workload through QemuBackend (TCG) against a plain
qemu-system-x86_64 boot of the same kernel + initramfs to the guest's ready marker (the baseline).

Run: python3 benchmarks/vm_boot.py [--runs N]   (needs e2e/setup.d/20-guests.sh to have fetched the guest)
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hybridorch import api  # noqa: E402
from hybridorch.backends.qemu import QemuBackend, program_for  # noqa: E402
from hybridorch.vm.console import READY_MARKER  # noqa: E402
from hybridorch.vm.guestimage import load_guest  # noqa: E402
from hybridorch.vm.initramfs import build_initrd  # noqa: E402

STACK = """\
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata:
  name: bench-vm-boot
spec:
  workloads:
    - name: web
      runtime: vm
      resources: {{cpu: "1", memory: 256Mi}}
      ports: [{{port: 80, hostPort: {port}}}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def through_backend(path: str) -> float:
    plan = api.plan_stack(path)
    backend = QemuBackend()
    started = time.monotonic()
    backend.up(plan, None, timeout=120)
    seconds = time.monotonic() - started
    backend.down(plan)
    return seconds


def plain_qemu(path: str, work: Path) -> float:
    """The same kernel and initrd (same /init: httpd on the port) booted by hand until the ready marker."""
    plan = api.plan_stack(path)
    w = plan.stack.workloads[0]
    guest = load_guest("amd64")
    initrd = work / "plain-initrd.img"
    build_initrd(guest, program_for(w, "vm"), initrd)
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", "256", "-nodefaults",
           "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(guest.kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 quiet panic=-1", "-netdev", "user,id=n0",
           "-device", "virtio-net-pci,netdev=n0,romfile="]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if READY_MARKER.encode() in line:
                return time.monotonic() - started
        raise RuntimeError("plain QEMU exited before the ready marker")
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hybridorch-bench-") as tmp:
        work = Path(tmp)
        os.environ["HYBRIDORCH_STATE_DIR"] = str(work / "state")
        path = work / "stack.yaml"
        path.write_text(STACK.format(port=free_port()))
        through_backend(str(path))  # warm-up: the KVM probe verdict gets cached, page cache filled
        ours = [through_backend(str(path)) for _ in range(args.runs)]
        base = [plain_qemu(str(path), work) for _ in range(args.runs)]
    o, b = statistics.median(ours), statistics.median(base)
    print(f"vm boot-to-ready, amd64 TCG, median of {args.runs}:")
    print(f"  hybridorch QemuBackend.up (port answers HTTP): {o:.2f}s  runs {', '.join(f'{x:.2f}' for x in ours)}")
    print(f"  plain qemu-system-x86_64 to ready marker:      {b:.2f}s  runs {', '.join(f'{x:.2f}' for x in base)}")
    print(f"  ratio backend/plain: {o / b:.2f}x")


if __name__ == "__main__":
    main()
