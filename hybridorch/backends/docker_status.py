"""What the Docker backend reads back from its containers: readiness (log marker, then the port), a workload's
status from its replicas' containers, published ports, and their log lines."""
from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, Iterator

from hybridorch import proc
from hybridorch.core.durations import parse_time
from hybridorch.core.labels import LABEL_STACK, LABEL_TENANT
from hybridorch.core.runtime import Runtime, State, readiness_port
from hybridorch.errors import BackendError
from hybridorch.render import domain
from hybridorch.backends.base import WorkloadStatus
from hybridorch.backends.docker_api import Sdk, explain
from hybridorch.backends.docker_names import network_name

if TYPE_CHECKING:
    from hybridorch.core.policy import Placement


def sandbox_text(runtime: str) -> str:
    """How status names a sandbox runtime: its Docker name and what it is (runsc is gVisor, the others Kata)."""
    return f"sandboxed with the {runtime} runtime ({'gVisor' if runtime == 'runsc' else 'Kata Containers'})"


def container_ready(c: Any, p: Placement) -> bool:
    w = p.workload
    if w.ready and w.ready.marker:
        if w.ready.marker not in c.logs(stdout=True, stderr=True).decode(errors="replace"):
            return False
    port = readiness_port(w)
    if port is None:
        return True
    networks = (c.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
    if not address:
        return False
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def workload_status(p: Placement, containers: list[Any]) -> WorkloadStatus:
    w = p.workload
    if not containers:
        return WorkloadStatus(w.name, p.runtime, State.ABSENT, detail="not created: run `hybridorch up`")
    states = [c.attrs["State"] for c in containers]
    running = [c for c, s in zip(containers, states) if s["Status"] == "running"]
    failed = [(c, s) for c, s in zip(containers, states) if s["Status"] in ("exited", "dead")]
    if failed:
        c, s = failed[0]
        state, why = State.FAILED, f"{c.name} exited with code {s['ExitCode']}"
    elif len(running) == len(containers) and len(containers) >= w.replicas:
        ready = all(container_ready(c, p) for c in running)
        state, why = (State.READY if ready else State.RUNNING), f"{len(running)}/{w.replicas} replicas running"
    else:
        state, why = State.PENDING, f"{len(running)}/{w.replicas} replicas running"
    ports = tuple(f"{addr}:{port or '*'}->{target}" for c in containers for target, addr, port in bindings(c))
    started = [t for t in (parse_time(s.get("StartedAt", "")) for s in states if s["Status"] == "running")
               if t is not None]
    uptime = time.time() - min(started) if started else None
    runtime_name = containers[0].attrs["HostConfig"].get("Runtime") or "runc"
    detail = why
    if p.runtime is Runtime.SANDBOXED:
        sandboxed_by = domain.sandbox_runtime_of([runtime_name])
        # a container an older hybridorch started under runc is named for what it is, not called a sandbox
        detail += (f"; {sandbox_text(runtime_name)}" if sandboxed_by else
                   f"; NOT sandboxed: runs under {runtime_name} on the host's kernel (started by an older "
                   "hybridorch): run `hybridorch up` again")
    return WorkloadStatus(w.name, p.runtime, state, ports=ports, uptime_seconds=uptime, detail=detail,
                          extra={"containers": [c.name for c in containers], "tenant": w.tenant,
                                 "network": network_name(containers[0].labels.get(LABEL_STACK, ""),
                                                         containers[0].labels.get(LABEL_TENANT, w.tenant)),
                                 "containerRuntime": runtime_name})


def bindings(c: Any) -> list[tuple[str, str, str]]:
    """(container port/proto, host address, host port) of every published port; an automatic host port is the one
    Docker picked ("" while the container does not run)."""
    actual = (c.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    out = []
    for target, binds in sorted(((c.attrs.get("HostConfig") or {}).get("PortBindings") or {}).items()):
        for b in binds or []:
            addr, port = b.get("HostIp") or "0.0.0.0", b.get("HostPort", "")
            if not port:
                port = next((a.get("HostPort", "") for a in actual.get(target) or []
                             if (a.get("HostIp") or "0.0.0.0") == addr), "")
            out.append((target, addr, port))
    return out


def log_lines(sdk: Sdk, containers: list[Any], tail: int | None, follow: bool) -> Iterator[str]:
    """Lines of every container, prefixed with its name when there are several."""
    prefix = len(containers) > 1
    for c in containers:
        try:
            if follow:
                stream = c.logs(stream=True, follow=True, tail=tail if tail is not None else "all")
                yield from proc.split_stream(stream)
            else:
                text = c.logs(tail=tail if tail is not None else "all").decode(errors="replace")
                for line in text.splitlines():
                    yield f"[{c.name}] {line}" if prefix else line
        except sdk.errors.APIError as err:
            raise BackendError(f"reading logs of {c.name}: {explain(err)}") from err


def readiness_text(p: Placement) -> str:
    w = p.workload
    if w.ready and w.ready.marker:
        return f"waiting for {w.ready.marker!r} in its log"
    port = readiness_port(w)
    return f"port {port} does not accept connections" if port else "not running"


def last_log_line(c: Any) -> str:
    try:
        lines = c.logs(tail=5).decode(errors="replace").strip().splitlines()
    except Exception:  # noqa: BLE001 - the log is only decoration of an error already being raised
        return ""
    return f"; last log line: {lines[-1].strip()}" if lines else ""
