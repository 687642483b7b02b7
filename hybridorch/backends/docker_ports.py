"""The host ports a stack's containers publish, checked before anything is created: two explicit claims of one
port, or a port something else on this machine holds, fail with the port and the workload named."""
from __future__ import annotations

import socket
from typing import Any

from hybridorch.core.labels import LABEL_WORKLOAD
from hybridorch.errors import BackendError
from hybridorch.backends.docker_status import bindings

HostPort = tuple[str, "int | None", str]   # (address, port or None: automatic, tcp|udp)


def check_host_ports(wanted: list[tuple[str, tuple[HostPort, ...]]], existing: dict[str, Any],
                     stale: list[str]) -> None:
    """`wanted`: (workload, its host ports) of every container to create; `existing`: the stack's containers by
    name, of which `stale` are about to be removed (their ports count as free)."""
    ours_freed: set[tuple[str, int, str]] = set()
    for name in stale:
        ours_freed |= published(existing[name])
    kept_ports: dict[tuple[int, str], str] = {}
    for name, c in existing.items():
        if name not in stale:
            for _, port, proto in published(c):
                kept_ports[(port, proto)] = c.labels.get(LABEL_WORKLOAD, name)
    claimed: dict[tuple[int, str], str] = dict(kept_ports)
    for workload, host_ports in wanted:
        for addr, port, proto in host_ports:
            if port is None:
                continue   # automatic: Docker takes a free one
            other = claimed.get((port, proto))
            if other is not None:
                raise BackendError(f"host port {port}/{proto} is wanted by workloads {other} and {workload}: "
                                   "give one of them a different hostPort")
            claimed[(port, proto)] = workload
            if (addr, port, proto) in ours_freed:
                continue
            if not port_free(addr, port, proto):
                raise BackendError(f"host port {addr}:{port}/{proto} for workload {workload} is already in "
                                   "use: stop what holds it, or set a different hostPort for that port")


def published(c: Any) -> set[tuple[str, int, str]]:
    return {(addr or "0.0.0.0", int(port), target.split("/")[1]) for target, addr, port in bindings(c) if port}


def port_free(addr: str, port: int, proto: str) -> bool:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers, not listeners
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True
