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
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ContextManager, Iterator

from hybridorch import proc
from hybridorch.render import domain
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_REPLICA, LABEL_WORKLOAD, object_labels
from hybridorch.core.runtime import (CONTAINER_RUNTIMES, Runtime, assign_host_ports, container_env,
                                     host_address, publishes_host_ports, read_only_root, scratch_tmp)
from hybridorch.backends import docker_api, docker_images, docker_inventory
from hybridorch.backends.docker_names import container_name, network_name, stack_filter, volume_name
from hybridorch.backends.docker_ports import check_host_ports
from hybridorch.backends.docker_resources import (ensure_networks, ensure_volumes, prune_networks, remove_container,
                                                  remove_network, remove_volume)
from hybridorch.backends.docker_status import (container_ready, last_log_line, log_lines, readiness_text, sandbox_text,
                                               workload_status)
from hybridorch.backends.base import Backend, Kept, LiveFacts, Managed, Removal, WorkloadStatus
from hybridorch.backends.events import Event, EventKind

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.core.policy import Placement
    from hybridorch.core.spec import Workload
    from hybridorch.render.writer import Rendered

LABEL_SPEC_HASH = "hybridorch.dev/spec-hash"
LABEL_VOLUME = "hybridorch.dev/volume"
DATA_KEPT = "data (kept without --delete-data)"
PIDS_LIMIT = 256   # enough for a service, stops a fork bomb from starving the host
# Docker runtimes that give a sandboxed placement its own kernel, best first (gVisor, then Kata); without one, the
# local target runs a sandboxed placement in its own VM (backends/local.py), never here under plain runc
SANDBOX_RUNTIMES = domain.SANDBOX_RUNTIMES
# the writable /tmp under a read-only root (Kubernetes: an emptyDir); in the container's memory, so bounded
SCRATCH_TMPFS = {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"}


@dataclass(frozen=True)
class ContainerSpec:
    """One container as `up` wants it; `spec_hash` covers everything that, changed, needs a new container."""

    name: str
    workload: str
    replica: int
    runtime: Runtime
    network: str
    alias: str
    create: dict[str, Any] = field(compare=False)
    spec_hash: str = ""
    host_ports: tuple[tuple[str, int | None, str], ...] = ()   # (address, port or None: automatic, tcp|udp)
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
            sdk = docker_api.connect(int(self.options.get("docker_timeout", 120)))
            self._docker, self._errors = sdk.client, sdk.errors
        return self._docker

    @property
    def sdk(self) -> docker_api.Sdk:
        return docker_api.Sdk(self.client, self._errors)

    def _api(self, what: str) -> ContextManager[None]:
        return self.sdk.call(what)

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
                removed += remove_container(self.sdk, name, run.stack)
            for name in reversed(run.networks):
                removed += remove_network(self.sdk, name, run.stack)
            # volumes this run created hold nothing older than this run
            for name in reversed(run.volumes):
                removed += remove_volume(self.sdk, name, run.stack)
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
            out.append(workload_status(p, containers))
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
        return log_lines(self.sdk, found, tail, follow)

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Containers and networks of the stack (found by label); its volumes only with `delete_data`."""
        removed: list[str] = []
        stack = plan.stack.name
        with self._api("listing containers"):
            containers = self.client.containers.list(all=True, filters=stack_filter(stack))
        for c in containers:
            gone = remove_container(self.sdk, c.name, stack)
            removed += gone
            for item in gone:
                self.events(Event(c.labels.get(LABEL_WORKLOAD, c.name), EventKind.REMOVED, item))
        with self._api("listing networks"):
            networks = self.client.networks.list(filters=stack_filter(stack))
        for n in networks:
            # by ID: every network carrying the stack's labels goes, also a second one of the same name
            removed += remove_network(self.sdk, n.id, stack)
        with self._api("listing volumes"):
            volumes = sorted(v.name for v in self.client.volumes.list(filters=stack_filter(stack)))
        if delete_data:
            for name in volumes:
                removed += remove_volume(self.sdk, name, stack)
            return Removal(tuple(removed))
        return Removal(tuple(removed), tuple(Kept(f"volume {name}", DATA_KEPT, f"docker volume rm {name}")
                                             for name in volumes))

    # --- inventory and live facts (docker_inventory.py) ----------------------------------------------------

    def inventory(self) -> list[Managed]:
        return docker_inventory.managed_containers(self.client)

    def remove(self, items: list[Managed], *, keep_data: bool = True) -> Removal:
        return docker_inventory.remove_containers(self.client, items, keep_data)

    def live_facts(self, plan: Plan) -> LiveFacts:
        return docker_inventory.live_containers(self.client, plan.stack.name)

    # --- up, step by step -----------------------------------------------------------------------------

    def _up(self, plan: Plan, *, wait: bool, timeout: float) -> None:
        assert self._run is not None
        stack = plan.stack.name
        self._ensure_images(plan)
        sandboxed = [p.name for p in plan.placements if p.runtime is Runtime.SANDBOXED]
        sandbox_runtime = self._sandbox_runtime() if sandboxed else None
        if sandboxed and sandbox_runtime is None:
            # runc would share the host's kernel: that is no sandbox, whatever else is locked down
            raise BackendError(f"workload(s) {', '.join(sandboxed)} are sandboxed but this Docker engine has no gVisor "
                               "(runsc) or Kata runtime registered: use --target local (it runs them in their own VM)"
                               ", or register runsc/kata with Docker")
        wanted = [spec for p in plan.placements for spec in self._specs(plan, p, sandbox_runtime)]
        # name -> ID: the stack's networks are found by label and used by ID (a name may be taken twice)
        networks = ensure_networks(self.sdk, stack, {**{net: tenant for s in wanted for net, tenant in s.peers},
                                                     **{s.network: plan.placement(s.workload).workload.tenant
                                                        for s in wanted}}, created=self._run.networks)
        with self._api("listing containers"):
            existing = {c.name: c for c in self.client.containers.list(all=True, filters=stack_filter(stack))}
        keep = {s.name for s in wanted if s.name in existing and _unchanged(existing[s.name], s, networks)}
        create = [s for s in wanted if s.name not in keep]
        stale = [name for name in existing if name not in keep]
        check_host_ports([(s.workload, s.host_ports) for s in create], existing, stale)
        # stale first: a replaced container frees its name and host ports for its successor
        for name in stale:
            remove_container(self.sdk, name, stack)
        ensure_volumes(self.sdk, (v for s in create for v in s.volumes), created=self._run.volumes)
        for spec in create:
            self._create(spec, networks)
        prune_networks(self.sdk, stack, keep=set(networks.values()))
        if wait:
            self._wait(plan, wanted, timeout)

    def _ensure_images(self, plan: Plan) -> None:
        self.ensure_images([p.workload.image for p in plan.placements if p.workload.image], plan.stack.file)

    def ensure_images(self, refs: list[str], stack_file: str) -> None:
        """Build the missing local images among `refs`, parents first (also for images that VMs run)."""
        docker_images.ensure_images(self.sdk, self.events, refs, stack_file)

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
        network = network_name(stack, w.tenant)
        sandboxed = p.runtime is Runtime.SANDBOXED
        sandbox = sandbox_text(sandbox_runtime) if sandboxed and sandbox_runtime else ""
        assigned = assign_host_ports(plan.stack.workloads)   # stack-wide: VMs' forwards take their share too
        specs = []
        for i in range(w.replicas):
            name = container_name(stack, w.name, i)
            labels = {**plan.stack.labels, **w.labels, **object_labels(stack, w.name, p.runtime, w.tenant),
                      LABEL_REPLICA: str(i)}
            volumes = tuple((volume_name(stack, w.name, i, v.name),
                             {**object_labels(stack, w.name, tenant=w.tenant), LABEL_REPLICA: str(i),
                              LABEL_VOLUME: v.name}) for v in w.volumes)
            # None: an automatic host port (Docker picks a free one, as `docker run -P` does)
            host_ports = tuple((host_address(x.public), assigned[(w.name, x.port, x.protocol)], x.protocol.lower())
                               for x in w.ports) if publishes_host_ports(i) else ()
            create: dict[str, Any] = {
                "image": w.image, "name": name, "hostname": name[:63], "labels": labels,
                "environment": container_env(w, stack, i),
                "entrypoint": list(w.command) if w.command is not None else None,
                "command": list(w.args) if w.args is not None else None,
                "ports": {f"{x.port}/{x.protocol.lower()}": (addr, hp)
                          for x, (addr, hp, _) in zip(w.ports, host_ports)},
                **_confinement(w, non_root),
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

    def _create(self, spec: ContainerSpec, networks: dict[str, str]) -> None:
        """Create and start one container, attached by ID to its tenant's network (and its peers')."""
        assert self._run is not None
        self._run.containers.append(spec.name)
        endpoint = self.client.api.create_endpoint_config(aliases=[spec.alias])
        net_id = networks[spec.network]
        with self._api(f"starting workload {spec.workload} ({spec.name})"):
            container = self.client.containers.create(**{**spec.create, "network": net_id},
                                                      networking_config={net_id: endpoint})
            self.events(Event(spec.workload, EventKind.CREATED, f"container {spec.name}"))
            for net, _ in spec.peers:
                self.client.networks.get(networks[net]).connect(container, aliases=[spec.alias])
            try:
                container.start()
            except self._errors.APIError as err:
                self.events(Event(spec.workload, EventKind.FAILED, f"container {spec.name} did not start"))
                raise BackendError(f"starting workload {spec.workload} ({spec.name}): {docker_api.explain(err)}") \
                    from err
            self.events(Event(spec.workload, EventKind.STARTING, f"container {spec.name}"))

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
                    self.events(Event(spec.workload, EventKind.FAILED, f"{spec.name} exited ({state['ExitCode']})"))
                    raise BackendError(f"workload {spec.workload} ({spec.name}) exited with code {state['ExitCode']}"
                                       f"{last_log_line(c)}")
                if state["Status"] == "running" and container_ready(c, p):
                    continue
                if time.monotonic() - start > limit:
                    self.events(Event(spec.workload, EventKind.FAILED, f"{spec.name} not ready after {limit:.0f} s"))
                    raise BackendError(f"workload {spec.workload} ({spec.name}) not ready after {limit:.0f} s "
                                       f"({readiness_text(p)}){last_log_line(c)}")
                still.append(spec)
            waiting = {s.workload for s in still}
            for workload in dict.fromkeys(s.workload for s in pending if s.workload not in waiting):
                n = sum(s.workload == workload for s in specs)
                self.events(Event(workload, EventKind.READY, f"{n}/{n} replicas"))
            pending = still
            return not pending

        # every limit is at most `timeout`, so all_ready raises for a late container before this deadline passes
        proc.wait_until(all_ready, timeout + 1, poll=0.2)


# --- helpers private to this backend ------------------------------------------------------------------

def _confinement(w: Workload, non_root: bool) -> dict[str, Any]:
    """The limits and hardening of each container of a workload (docker-py's `create` arguments)."""
    low = min((x.port for x in w.ports if x.port < 1024), default=None)
    return {
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
        # the hardening rule Kubernetes follows too (runtime.read_only_root): a read-only root, a tmpfs /tmp
        "read_only": read_only_root(w),
        "tmpfs": dict(SCRATCH_TMPFS) if scratch_tmp(w) else None,
    }


def _unchanged(container: Any, spec: ContainerSpec, networks: dict[str, str]) -> bool:
    """Same spec, running, and on the very networks (by ID) this run uses: one left on an extra same-named
    network is replaced, so that network can go."""
    attached = {n.get("NetworkID") for n in ((container.attrs.get("NetworkSettings") or {}).get("Networks")
                                             or {}).values()}
    return (container.labels.get(LABEL_SPEC_HASH) == spec.spec_hash
            and container.attrs["State"]["Status"] == "running"
            and {networks[spec.network], *(networks[net] for net, _ in spec.peers)} <= attached)


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

