"""Runs `container` and `sandboxed` placements as containers on the local Docker engine (docker SDK, lazily imported).

One bridge network per tenant, restricted containers with the spec's limits, a spec-hash label so `up` is
idempotent, and `down` that finds exactly its own objects by label.

Replicas: a workload with N replicas runs N containers named <stack>-<workload>-<i>. Only replica 0 publishes
host ports: consecutive host ports would collide with the next workload's port (shop: web 8080 x2, api 8081);
every replica is reachable inside its tenant network under the workload's name (a DNS alias shared by replicas).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from hybridorch.core import images
from hybridorch import proc
from hybridorch.render import domain
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_MANAGED, LABEL_STACK, LABEL_TENANT, LABEL_WORKLOAD, MANAGED_BY, object_labels, selector_terms
from hybridorch.core.runtime import CONTAINER_RUNTIMES, State, container_env, host_address, publishes_host_ports, readiness_port
from hybridorch.backends.base import Backend, Kept, Removal, WorkloadStatus

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.core.policy import Placement
    from hybridorch.render.stack import Rendered

LABEL_SPEC_HASH = "hybridorch.dev/spec-hash"
LABEL_REPLICA = "hybridorch.dev/replica"
LABEL_VOLUME = "hybridorch.dev/volume"
DATA_KEPT = "data (kept without --delete-data)"
PIDS_LIMIT = 256   # enough for a service, stops a fork bomb from starving the host
# Docker runtimes that give a sandboxed placement its own kernel, best first (gVisor, then Kata); without one, the
# local target runs a sandboxed placement in its own VM (backends/local.py), never here under plain runc
SANDBOX_RUNTIMES = domain.SANDBOX_RUNTIMES
SANDBOX_TMPFS = {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"}
DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def sandbox_text(runtime: str) -> str:
    """How status names a sandbox runtime: its Docker name and what it is (runsc is gVisor, the others Kata)."""
    return f"sandboxed with the {runtime} runtime ({'gVisor' if runtime == 'runsc' else 'Kata Containers'})"


def network_name(stack: str, tenant: str) -> str:
    return f"hybridorch-{stack}-{tenant}"


def container_name(stack: str, workload: str, replica: int) -> str:
    return f"{stack}-{workload}-{replica}"


def volume_name(stack: str, workload: str, replica: int, volume: str) -> str:
    """One named volume per replica and spec volume, like a StatefulSet's claim per pod: data outlives the
    container (a changed spec replaces the container, not its data) and `down`, unless --delete-data."""
    return f"hybridorch-{stack}-{workload}-{replica}-{volume}"


def stack_filter(stack: str) -> dict[str, list[str]]:
    return {"label": selector_terms(stack)}


@dataclass(frozen=True)
class ContainerSpec:
    """One container as `up` wants it; `spec_hash` covers everything that, changed, needs a new container."""

    name: str
    workload: str
    replica: int
    runtime: str
    network: str
    alias: str
    create: dict[str, Any] = field(compare=False)
    spec_hash: str = ""
    host_ports: tuple[tuple[str, int, str], ...] = ()   # (address, port, tcp|udp)
    sandbox: str = ""                                   # how a sandboxed placement is isolated, for status
    volumes: tuple[tuple[str, dict[str, str]], ...] = ()  # (volume name, its labels)
    # networks of the tenants its ports' allowFrom names: they reach it by its alias (all its ports: a Docker
    # network has no port filter, unlike the NetworkPolicy, which opens only the ports that name them)
    peers: tuple[tuple[str, str], ...] = ()               # (network name, tenant)


@dataclass
class _Run:
    """What one `up` created, so a failure or Ctrl-C removes exactly that."""

    stack: str
    containers: list[str] = field(default_factory=list)   # names, recorded before the create call
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._docker: Any = None
        self._errors: Any = None
        self._run: _Run | None = None

    # --- connection and error translation ---------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._docker is None:
            try:
                import docker  # type: ignore[import-untyped]
                import docker.errors  # type: ignore[import-untyped]
            except ImportError as err:
                raise BackendError("the docker Python SDK is missing: pip install 'docker>=7.1'") from err
            host = os.environ.get("DOCKER_HOST", DEFAULT_SOCKET)
            try:
                client = docker.from_env(timeout=int(self.options.get("docker_timeout", 120)))
                client.ping()
            except docker.errors.DockerException as err:
                raise BackendError(_engine_down_message(host, err)) from err
            self._docker, self._errors = client, docker.errors
        return self._docker

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        """Turn SDK and connection errors into one-line BackendErrors naming what was being done."""
        import requests

        client = self.client
        try:
            yield
        except self._errors.APIError as err:
            raise BackendError(f"{what}: {_explain(err)}") from err
        except self._errors.DockerException as err:
            raise BackendError(f"{what}: {err}") from err
        except requests.exceptions.RequestException as err:
            host = client.api.base_url
            raise BackendError(f"{what}: lost the Docker engine at {host} ({_root_reason(err)})") from err

    # --- the Backend interface ----------------------------------------------------------------------

    def up(self, plan: Plan, rendered: Rendered | None = None, *, wait: bool = True,
           timeout: float = 300) -> list[WorkloadStatus]:
        others = [p.name for p in plan.placements if p.runtime not in CONTAINER_RUNTIMES]
        if others:
            raise BackendError(f"target docker runs only containers; {', '.join(others)} need a VM: use --target local")
        self._run = _Run(plan.stack.name)
        try:
            self._up(plan, wait=wait, timeout=timeout)
        except BaseException:
            self.rollback()
            raise
        return self.status(plan)

    def rollback(self) -> list[str]:
        """Remove what the last `up` created (called by up itself on failure, and by LocalBackend)."""
        run, self._run = self._run, None
        if run is None or (not run.containers and not run.networks and not run.volumes):
            return []
        removed: list[str] = []
        with _no_interrupts():
            for name in reversed(run.containers):
                removed += self._remove_container(name, run.stack)
            for name in reversed(run.networks):
                removed += self._remove_network(name, run.stack)
            # volumes this run created hold nothing older than this run
            for name in reversed(run.volumes):
                removed += self._remove_volume(name, run.stack)
        return removed

    def status(self, plan: Plan) -> list[WorkloadStatus]:
        by_workload: dict[str, list[Any]] = {}
        with self._api("listing containers"):
            for c in self.client.containers.list(all=True, filters=stack_filter(plan.stack.name)):
                by_workload.setdefault(c.labels.get(LABEL_WORKLOAD, ""), []).append(c)
        out = []
        for p in plan.placements:
            if p.runtime not in CONTAINER_RUNTIMES:
                continue
            containers = sorted(by_workload.get(p.name, []), key=lambda c: int(c.labels.get(LABEL_REPLICA, 0)))
            out.append(self._workload_status(p, containers))
        return out

    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Lines of every replica (prefixed with the container name when there are several).

        With --follow only replica 0 is followed, so lines stay in order."""
        with self._api("listing containers"):
            found = self.client.containers.list(
                all=True, filters={"label": stack_filter(plan.stack.name)["label"] + [f"{LABEL_WORKLOAD}={workload}"]})
        if not found:
            raise BackendError(f"workload {workload} of stack {plan.stack.name} has no containers: run `hybridorch up`")
        found.sort(key=lambda c: int(c.labels.get(LABEL_REPLICA, 0)))
        if follow:
            found = found[:1]
        return self._log_lines(found, tail, follow)

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Containers and networks of the stack (found by label); its volumes only with `delete_data`."""
        removed: list[str] = []
        stack = plan.stack.name
        with self._api("listing containers"):
            containers = self.client.containers.list(all=True, filters=stack_filter(stack))
        for c in containers:
            removed += self._remove_container(c.name, stack)
        with self._api("listing networks"):
            networks = self.client.networks.list(filters=stack_filter(stack))
        for n in networks:
            removed += self._remove_network(n.name, stack)
        with self._api("listing volumes"):
            volumes = sorted(v.name for v in self.client.volumes.list(filters=stack_filter(stack)))
        if delete_data:
            for name in volumes:
                removed += self._remove_volume(name, stack)
            return Removal(tuple(removed))
        return Removal(tuple(removed), tuple(Kept(f"volume {name}", DATA_KEPT, f"docker volume rm {name}")
                                             for name in volumes))

    # --- up, step by step -----------------------------------------------------------------------------

    def _up(self, plan: Plan, *, wait: bool, timeout: float) -> None:
        assert self._run is not None
        stack = plan.stack.name
        self._ensure_images(plan)
        sandboxed = [p.name for p in plan.placements if p.runtime == "sandboxed"]
        sandbox_runtime = self._sandbox_runtime() if sandboxed else None
        if sandboxed and sandbox_runtime is None:
            # runc would share the host's kernel: that is no sandbox, whatever else is locked down
            raise BackendError(f"workload(s) {', '.join(sandboxed)} are sandboxed but this Docker engine has no gVisor "
                               "(runsc) or Kata runtime registered: use --target local (it runs them in their own VM)"
                               ", or register runsc/kata with Docker")
        wanted = [spec for p in plan.placements for spec in self._specs(plan, p, sandbox_runtime)]
        with self._api("listing containers"):
            existing = {c.name: c for c in self.client.containers.list(all=True, filters=stack_filter(stack))}
        keep = {s.name for s in wanted if s.name in existing and _unchanged(existing[s.name], s)}
        create = [s for s in wanted if s.name not in keep]
        stale = [name for name in existing if name not in keep]
        self._check_ports(create, existing, stale)
        # stale first: a replaced container frees its name and host ports for its successor
        for name in stale:
            self._remove_container(name, stack)
        networks = self._ensure_networks(stack, {**{net: tenant for s in wanted for net, tenant in s.peers},
                                                 **{s.network: plan.placement(s.workload).workload.tenant
                                                    for s in wanted}})
        self._ensure_volumes(create)
        for spec in create:
            self._create(spec)
        self._prune_networks(stack, keep=networks)
        if wait:
            self._wait(plan, wanted, timeout)

    def _ensure_images(self, plan: Plan) -> None:
        self.ensure_images([p.workload.image for p in plan.placements if p.workload.image], plan.stack.file)

    def ensure_images(self, refs: list[str], stack_file: str) -> None:
        """Build the missing local images among `refs`, parents first (also for images that VMs run)."""
        dirs = images.image_dirs(stack_file)
        for ref in dict.fromkeys(refs):
            # the content-derived tag: a recipe that changed since its human tag was built is built again
            if self._has_image(images.content_ref(ref, dirs)):
                continue
            for recipe in images.build_order(ref, dirs):
                if not self._has_image(recipe.content_ref):
                    self._build(recipe)

    def _has_image(self, ref: str) -> bool:
        with self._api(f"looking up image {ref}"):
            try:
                self.client.images.get(ref)
                return True
            except self._errors.ImageNotFound:
                return False

    def _build(self, recipe: images.Recipe) -> None:
        with tempfile.TemporaryDirectory(prefix="hybridorch-build-") as tmp:
            context = recipe.assemble(Path(tmp) / "context")
            try:
                # pull=False: there is no registry; parents are local images built just before
                image, _ = self.client.images.build(path=str(context), tag=recipe.ref, rm=True, forcerm=True,
                                                    pull=False, labels={LABEL_MANAGED: MANAGED_BY})
                # also under the content-derived tag that rendered Kubernetes manifests name (images.content_ref)
                image.tag(*recipe.content_ref.rsplit(":", 1))
            except self._errors.BuildError as err:
                last = next((str(x.get("stream") or x.get("error", "")).strip() for x in reversed(list(err.build_log))
                             if (x.get("stream") or x.get("error", "")).strip()), str(err))
                raise BackendError(f"building image {recipe.ref} from {recipe.dockerfile} failed: {last}") from err
            except self._errors.APIError as err:
                raise BackendError(f"building image {recipe.ref} from {recipe.dockerfile} failed: {_explain(err)}") \
                    from err

    def _sandbox_runtime(self) -> str | None:
        with self._api("reading engine info"):
            registered = set((self.client.info().get("Runtimes") or {}).keys())
        return domain.sandbox_runtime_of(registered)

    def _specs(self, plan: Plan, p: Placement, sandbox_runtime: str | None) -> list[ContainerSpec]:
        w = p.workload
        stack = plan.stack.name
        assert w.image is not None  # the spec loader requires an image for container runtimes
        with self._api(f"inspecting image {w.image}"):
            image = self.client.images.get(w.image)
        image_user = (image.attrs.get("Config") or {}).get("User") or ""
        non_root = image_user not in ("", "0", "root") and not image_user.startswith(("0:", "root:"))
        tcp_ports = [x.port for x in w.ports]
        low = min((x for x in tcp_ports if x < 1024), default=None)
        network = network_name(stack, w.tenant)
        sandboxed = p.runtime == "sandboxed"
        sandbox = sandbox_text(sandbox_runtime) if sandboxed and sandbox_runtime else ""
        specs = []
        for i in range(w.replicas):
            name = container_name(stack, w.name, i)
            labels = {**plan.stack.labels, **w.labels, **object_labels(stack, w.name, p.runtime, w.tenant),
                      LABEL_REPLICA: str(i)}
            volumes = tuple((volume_name(stack, w.name, i, v.name),
                             {**object_labels(stack, w.name, tenant=w.tenant), LABEL_REPLICA: str(i),
                              LABEL_VOLUME: v.name}) for v in w.volumes)
            host_ports = tuple((host_address(x.public), x.published, x.protocol.lower())
                               for x in w.ports) if publishes_host_ports(i) else ()
            create: dict[str, Any] = {
                "image": w.image, "name": name, "hostname": name[:63], "labels": labels,
                "environment": container_env(w, stack, i),
                "entrypoint": list(w.command) if w.command is not None else None,
                "command": list(w.args) if w.args is not None else None,
                "ports": {f"{x.port}/{x.protocol.lower()}": (addr, hp)
                          for x, (addr, hp, _) in zip(w.ports, host_ports)},
                "nano_cpus": w.resources.cpu_millis * 1_000_000,
                "mem_limit": w.resources.memory_bytes,
                "memswap_limit": w.resources.memory_bytes,   # no swap beyond the limit
                "pids_limit": PIDS_LIMIT,
                "security_opt": ["no-new-privileges:true"],
                "cap_drop": ["ALL"],
                "cap_add": ["NET_BIND_SERVICE"] if low is not None else None,
                # a non-root user gets no capabilities from cap_add (no ambient caps), so lower the
                # unprivileged port floor inside the container's own network namespace instead
                "sysctls": {"net.ipv4.ip_unprivileged_port_start": str(low)} if low is not None and non_root else None,
                "read_only": sandboxed,
                "tmpfs": dict(SANDBOX_TMPFS) if sandboxed else None,
                "volumes": {vol: {"bind": v.mount_path, "mode": "rw"}
                            for (vol, _), v in zip(volumes, w.volumes)} or None,
                "runtime": sandbox_runtime if sandboxed and sandbox_runtime else None,
                "ipc_mode": "private",
                "network": network,
                "detach": True,
            }
            create = {k: v for k, v in create.items() if v is not None}
            peers = tuple((network_name(stack, t), t) for t in sorted({t for x in w.ports for t in x.allow_from}
                                                                      - {w.tenant}))
            digest = hashlib.sha256(json.dumps({"create": create, "image_id": image.id, "alias": w.name,
                                                **({"peers": peers} if peers else {})},
                                               sort_keys=True).encode()).hexdigest()[:16]
            create["labels"] = {**labels, LABEL_SPEC_HASH: digest}
            specs.append(ContainerSpec(name=name, workload=w.name, replica=i, runtime=p.runtime, network=network,
                                       alias=w.name, create=create, spec_hash=digest, host_ports=host_ports,
                                       sandbox=sandbox, volumes=volumes, peers=peers))
        return specs

    def _check_ports(self, create: list[ContainerSpec], existing: dict[str, Any], stale: list[str]) -> None:
        """Fail before creating anything when a host port is taken, naming the port and the workload."""
        ours_freed: set[tuple[str, int, str]] = set()
        for name in stale:
            ours_freed |= _published(existing[name])
        kept_ports: dict[tuple[int, str], str] = {}
        for name, c in existing.items():
            if name not in stale:
                for _, port, proto in _published(c):
                    kept_ports[(port, proto)] = c.labels.get(LABEL_WORKLOAD, name)
        claimed: dict[tuple[int, str], str] = dict(kept_ports)
        for spec in create:
            for addr, port, proto in spec.host_ports:
                other = claimed.get((port, proto))
                if other is not None:
                    raise BackendError(f"host port {port}/{proto} is wanted by workloads {other} and {spec.workload}: "
                                       "give one of them a different hostPort")
                claimed[(port, proto)] = spec.workload
                if (addr, port, proto) in ours_freed:
                    continue
                if not _port_free(addr, port, proto):
                    raise BackendError(f"host port {addr}:{port}/{proto} for workload {spec.workload} is already in "
                                       "use: stop what holds it, or set a different hostPort for that port")

    def _ensure_networks(self, stack: str, wanted: dict[str, str]) -> set[str]:
        assert self._run is not None
        with self._api("listing networks"):
            existing = {n.name for n in self.client.networks.list(filters=stack_filter(stack))}
        for name, tenant in wanted.items():
            if name in existing:
                continue
            self._run.networks.append(name)
            with self._api(f"creating network {name}"):
                # a bridge network per tenant: Docker isolates user-defined bridges from each other
                self.client.networks.create(name, driver="bridge", check_duplicate=True,
                                            labels=object_labels(stack, tenant=tenant))
        return set(wanted)

    def _ensure_volumes(self, specs: list[ContainerSpec]) -> None:
        """Create the missing named volumes with the stack's labels (Docker would make unlabelled ones)."""
        assert self._run is not None
        for spec in specs:
            for name, labels in spec.volumes:
                with self._api(f"creating volume {name}"):
                    try:
                        self.client.volumes.get(name)
                        continue
                    except self._errors.NotFound:
                        pass
                    self._run.volumes.append(name)
                    self.client.volumes.create(name, driver="local", labels=labels)

    def _prune_networks(self, stack: str, keep: set[str]) -> None:
        with self._api("listing networks"):
            networks = self.client.networks.list(filters=stack_filter(stack))
        for n in networks:
            if n.name not in keep:
                self._remove_network(n.name, stack)

    def _create(self, spec: ContainerSpec) -> None:
        assert self._run is not None
        self._run.containers.append(spec.name)
        endpoint = self.client.api.create_endpoint_config(aliases=[spec.alias])
        with self._api(f"starting workload {spec.workload} ({spec.name})"):
            container = self.client.containers.create(networking_config={spec.network: endpoint}, **spec.create)
            for net, _ in spec.peers:
                self.client.networks.get(net).connect(container, aliases=[spec.alias])
            try:
                container.start()
            except self._errors.APIError as err:
                raise BackendError(f"starting workload {spec.workload} ({spec.name}): {_explain(err)}") from err

    def _wait(self, plan: Plan, specs: list[ContainerSpec], timeout: float) -> None:
        start = time.monotonic()
        pending = list(specs)

        def all_ready() -> bool:
            """Drop the ready ones; a container that exited, or is past its own ready.timeout, is an error."""
            nonlocal pending
            still = []
            for spec in pending:
                p = plan.placement(spec.workload)
                limit = min(timeout, p.workload.ready.timeout) if p.workload.ready else timeout
                with self._api(f"inspecting {spec.name}"):
                    c = self.client.containers.get(spec.name)
                state = c.attrs["State"]
                if state["Status"] in ("exited", "dead"):
                    raise BackendError(f"workload {spec.workload} ({spec.name}) exited with code {state['ExitCode']}"
                                       f"{_last_log_line(c)}")
                if state["Status"] == "running" and self._ready(c, p):
                    continue
                if time.monotonic() - start > limit:
                    raise BackendError(f"workload {spec.workload} ({spec.name}) not ready after {limit:.0f} s "
                                       f"({_readiness_text(p)}){_last_log_line(c)}")
                still.append(spec)
            pending = still
            return not pending

        # every limit is at most `timeout`, so all_ready raises for a late container before this deadline passes
        proc.wait_until(all_ready, timeout + 1, poll=0.2)

    def _ready(self, c: Any, p: Placement) -> bool:
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

    # --- status and logs --------------------------------------------------------------------------------

    def _workload_status(self, p: Placement, containers: list[Any]) -> WorkloadStatus:
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
            ready = all(self._ready(c, p) for c in running)
            state, why = (State.READY if ready else State.RUNNING), f"{len(running)}/{w.replicas} replicas running"
        else:
            state, why = State.PENDING, f"{len(running)}/{w.replicas} replicas running"
        ports = tuple(f"{addr}:{port}->{target}" for c in containers for target, addr, port in _bindings(c))
        started = [t for t in (_parse_time(s.get("StartedAt", "")) for s in states if s["Status"] == "running")
                   if t is not None]
        uptime = time.time() - min(started) if started else None
        runtime_name = containers[0].attrs["HostConfig"].get("Runtime") or "runc"
        detail = why
        if p.runtime == "sandboxed":
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

    def _log_lines(self, containers: list[Any], tail: int | None, follow: bool) -> Iterator[str]:
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
            except self._errors.APIError as err:
                raise BackendError(f"reading logs of {c.name}: {_explain(err)}") from err

    # --- removal ---------------------------------------------------------------------------------------

    def _remove_container(self, name: str, stack: str) -> list[str]:
        """Remove one container of `stack`; a same-named container that is not ours is never touched."""
        with self._api(f"removing container {name}"):
            try:
                container = self.client.containers.get(name)
                if not _belongs(container.labels, stack):
                    return []
                container.remove(force=True, v=True)
            except self._errors.NotFound:
                return []
        return [f"container {name}"]

    def _remove_network(self, name: str, stack: str) -> list[str]:
        with self._api(f"removing network {name}"):
            try:
                network = self.client.networks.get(name)
                if not _belongs(network.attrs.get("Labels"), stack):
                    return []
                network.remove()
            except self._errors.NotFound:
                return []
        return [f"network {name}"]


    def _remove_volume(self, name: str, stack: str) -> list[str]:
        with self._api(f"removing volume {name}"):
            try:
                volume = self.client.volumes.get(name)
                if not _belongs(volume.attrs.get("Labels"), stack):
                    return []
                volume.remove(force=True)
            except self._errors.NotFound:
                return []
        return [f"volume {name}"]


# --- helpers private to this backend ------------------------------------------------------------------

def _belongs(labels: dict[str, str] | None, stack: str) -> bool:
    labels = labels or {}
    return labels.get(LABEL_MANAGED) == MANAGED_BY and labels.get(LABEL_STACK) == stack


def _unchanged(container: Any, spec: ContainerSpec) -> bool:
    return (container.labels.get(LABEL_SPEC_HASH) == spec.spec_hash
            and container.attrs["State"]["Status"] == "running")


def _bindings(c: Any) -> list[tuple[str, str, str]]:
    out = []
    for target, binds in sorted(((c.attrs.get("HostConfig") or {}).get("PortBindings") or {}).items()):
        for b in binds or []:
            out.append((target, b.get("HostIp") or "0.0.0.0", b.get("HostPort", "")))
    return out


def _published(c: Any) -> set[tuple[str, int, str]]:
    return {(addr or "0.0.0.0", int(port), target.split("/")[1]) for target, addr, port in _bindings(c) if port}


def _port_free(addr: str, port: int, proto: str) -> bool:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers, not listeners
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True


def _parse_time(text: str) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    main, _, frac = text.rstrip("Z").partition(".")
    try:
        stamp = datetime.fromisoformat(main).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return stamp.timestamp() + (float(f"0.{frac[:6]}") if frac[:6].isdigit() else 0.0)


def _readiness_text(p: Placement) -> str:
    w = p.workload
    if w.ready and w.ready.marker:
        return f"waiting for {w.ready.marker!r} in its log"
    port = readiness_port(w)
    return f"port {port} does not accept connections" if port else "not running"


def _last_log_line(c: Any) -> str:
    try:
        lines = c.logs(tail=5).decode(errors="replace").strip().splitlines()
    except Exception:  # noqa: BLE001 - the log is only decoration of an error already being raised
        return ""
    return f"; last log line: {lines[-1].strip()}" if lines else ""


def _explain(err: Any) -> str:
    text = str(getattr(err, "explanation", None) or err)
    return " ".join(text.split())


def _root_reason(err: BaseException) -> str:
    """The innermost OS-level reason of a connection error (e.g. 'No such file or directory')."""
    seen: BaseException | None = err
    reason = str(err)
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            reason = seen.strerror
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, OSError) and arg.strerror:
                reason = arg.strerror
            inner = getattr(arg, "reason", None)
            if isinstance(inner, OSError) and inner.strerror:
                reason = inner.strerror
        seen = seen.__cause__ or seen.__context__
    return " ".join(reason.split())[:200]


def _engine_down_message(host: str, err: BaseException) -> str:
    if host == DEFAULT_SOCKET and not shutil.which("dockerd") and not os.path.exists("/var/run/docker.sock"):
        return "Docker is not installed: apt-get install docker.io (or set DOCKER_HOST to a running engine)"
    return (f"Docker engine not reachable at {host} ({_root_reason(err)}): start it (systemctl start docker, "
            "or e2e/setup.d/10-docker.sh) or point DOCKER_HOST at a running engine")


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ctrl-C during cleanup would leave half the stack behind: hold SIGINT until the cleanup is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending and callable(previous):
        previous(signal.SIGINT, None)

