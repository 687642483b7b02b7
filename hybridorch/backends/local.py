"""The default target: runs a whole stack on this machine, containers in Docker and VMs in QEMU.

Dispatches each placement by runtime (container -> DockerBackend, vm/nested -> QemuBackend; sandboxed -> Docker
under its gVisor/Kata runtime, or its own VM in QemuBackend when Docker has none or the policy's localSandbox says
vm: never a plain container), merges results in plan order, and removes what a failed or interrupted `up` started.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterator

from hybridorch.core import images
from hybridorch.errors import BackendError
from hybridorch.core.runtime import VM_RUNTIMES, LocalSandbox, Runtime
from hybridorch.vm.host import state_root
from hybridorch.backends.base import Backend, LiveFacts, Managed, Removal, Snapshot, WorkloadStatus, get_backend

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.render.writer import Rendered

# the registry's name of the backend each side of this target runs on
SIDES = {"containers": "docker", "vms": "qemu"}


def sandbox_runtime() -> str | None:
    """The gVisor/Kata runtime of the local Docker engine (the reading the local rendering used too)."""
    from hybridorch.vm.host import docker_sandbox_runtime

    return docker_sandbox_runtime()


class LocalBackend(Backend):
    """Containers first, then VMs (containers start in about a second, so a broken image fails fast).

    A sub-backend that fails cleans up its own partial work; this class then undoes the sides that had
    already succeeded in this run (`rollback`), so an interrupted `up` leaves only what existed before it."""

    name = "local"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._backends: dict[str, Backend] = {}

    def _side(self, kind: str) -> Backend:
        """The Docker or QEMU backend, from the registry on first use so a container-only stack never needs QEMU."""
        if kind not in self._backends:
            self._backends[kind] = get_backend(SIDES[kind], **self.options)
        return self._backends[kind]

    @staticmethod
    def split(plan: Plan, sandbox_vms: frozenset[str] = frozenset()) -> list[tuple[str, Plan]]:
        """The plan cut into the part each side runs, containers first; sides with no placements are left out.
        `sandbox_vms` names the sandboxed placements that run in their own VM."""
        parts = []
        for kind in ("containers", "vms"):
            placements = tuple(p for p in plan.placements if _side_of(p.runtime, p.name in sandbox_vms) == kind)
            if placements:
                parts.append((kind, replace(plan, placements=placements)))
        return parts

    def sandbox_vms(self, plan: Plan, *, up: bool = False) -> frozenset[str]:
        """The sandboxed placements that run in their own VM: all of them when the policy's localSandbox is vm, or
        (auto) when Docker has no gVisor/Kata runtime. With `up`, localSandbox: runtime and no such runtime is an
        error before anything starts: a sandboxed workload never runs as a plain container. Outside `up`, a
        sandboxed workload whose VM exists is looked for there (the engine's runtimes may have changed since)."""
        from hybridorch.render.domain import sandbox_in_vm

        sandboxed = [p.name for p in plan.placements if p.runtime is Runtime.SANDBOXED]
        if not sandboxed:
            return frozenset()
        choice = plan.profile.local_sandbox
        runtime = None if choice is LocalSandbox.VM else sandbox_runtime()
        if up and choice is LocalSandbox.RUNTIME and runtime is None:
            raise BackendError(f"workload(s) {', '.join(sandboxed)} are sandboxed and the policy's localSandbox is "
                               "runtime, but the Docker engine has no gVisor (runsc) or Kata runtime registered: "
                               "register one in /etc/docker/daemon.json, or use localSandbox: auto or vm (own VM)")
        if sandbox_in_vm(choice, runtime):
            return frozenset(sandboxed)
        if up:
            return frozenset()
        stack_dir = state_root() / plan.stack.name
        return frozenset(name for name in sandboxed if (stack_dir / name / "state.json").is_file())

    def up(self, plan: Plan, rendered: Rendered, *, wait: bool = True, timeout: float = 300) -> list[WorkloadStatus]:
        check_runnable_here(plan)
        in_vm = self.sandbox_vms(plan, up=True)
        self._ensure_vm_images(plan, in_vm)
        done: list[Backend] = []
        results: list[WorkloadStatus] = []
        parts = self.split(plan, in_vm)
        if "vms" not in {kind for kind, _ in parts} and (state_root() / plan.stack.name).is_dir():
            # VMs of this stack whose workloads left it or moved to Docker: the VM side removes them
            parts.append(("vms", replace(plan, placements=())))
        try:
            for kind, part in parts:
                backend = self._side(kind)
                results += backend.up(part, rendered, wait=wait, timeout=timeout)
                done.append(backend)
        except BaseException:
            # KeyboardInterrupt included: what this run started must not outlive it
            for backend in reversed(done):
                undo = getattr(backend, "rollback", None)
                if undo is not None:
                    undo()
            raise
        return _in_plan_order(plan, results)

    def _ensure_vm_images(self, plan: Plan, sandbox_vms: frozenset[str]) -> None:
        """Local Docker images that VMs run (exported into the guest) are built like the containers' own."""
        vms = [p for p in plan.placements if _side_of(p.runtime, p.name in sandbox_vms) == "vms"]
        if not vms:
            return
        from hybridorch.vm import disks
        from hybridorch.vm.host import missing_disks

        refs = self._side("vms").exported_images(vms)  # type: ignore[attr-defined]
        wanted = disks.plan_disks(plan)
        # a VM boots the disk its spec names or does not start: nothing may boot in its place
        missing = missing_disks(wanted, plan.stack.file)
        for p in vms:
            image = disks.disk_image(p.workload) if p.runtime in VM_RUNTIMES else None
            if image in missing:
                raise BackendError(
                    f"workload {p.name}: containerDisk {image} is not in the local Docker engine and no recipe "
                    f"builds it (looked in {', '.join(map(str, images.image_dirs(plan.stack.file)))}): "
                    f"`docker pull {image}`, or build an image holding /disk/*.qcow2 under that name")
        refs += wanted
        if refs:
            self._side("containers").ensure_images(refs, plan.stack.file)  # type: ignore[attr-defined]

    def status(self, plan: Plan) -> list[WorkloadStatus]:
        results: list[WorkloadStatus] = []
        for kind, part in self.split(plan, self.sandbox_vms(plan)):
            results += self._side(kind).status(part)
        return _in_plan_order(plan, results)

    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        placement = plan.placement(workload)
        kind = _side_of(placement.runtime, workload in self.sandbox_vms(plan))
        return self._side(kind).logs(replace(plan, placements=(placement,)), workload, tail=tail, follow=follow)

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Both sides are asked whatever the plan says now: Docker finds the stack's objects by label and QEMU by
        the stack's state directory, so a workload that left the stack or changed runtime leaves nothing behind
        (its data aside, which only `delete_data` removes)."""
        removed = Removal()
        has = {kind for kind, _ in self.split(plan, self.sandbox_vms(plan))}
        for kind in ("containers", "vms"):
            try:
                removed += self._side(kind).down(plan, delete_data=delete_data)
            except BackendError:
                if kind in has:
                    raise
                # nothing of this kind in the plan and its runtime is unusable: nothing of ours runs there
        return removed

    # --- across stacks and for the live audit: both sides, containers first ------------------------------------

    def inventory(self) -> list[Managed]:
        return self._side("containers").inventory() + self._side("vms").inventory()

    def remove(self, items: list[Managed], *, keep_data: bool = True) -> Removal:
        # each side removes only its own kind of item
        return self._side("containers").remove(items, keep_data=keep_data) + \
            self._side("vms").remove(items, keep_data=keep_data)

    def live_facts(self, plan: Plan) -> LiveFacts:
        return self._side("containers").live_facts(plan) + self._side("vms").live_facts(plan)

    # --- snapshots: only VMs have them (a sandboxed workload in its own VM keeps no disk) ----------------------

    def snapshot_create(self, plan: Plan, workload: str, name: str) -> list[Snapshot]:
        return self._side("vms").snapshot_create(plan, workload, name)

    def snapshot_list(self, plan: Plan, workload: str) -> list[Snapshot]:
        return self._side("vms").snapshot_list(plan, workload)

    def snapshot_restore(self, plan: Plan, workload: str, name: str | None) -> list[Snapshot]:
        return self._side("vms").snapshot_restore(plan, workload, name)

    def snapshot_prune(self, plan: Plan, workload: str, doomed: list[Snapshot]) -> None:
        self._side("vms").snapshot_prune(plan, workload, doomed)


def check_runnable_here(plan: Plan) -> None:
    """Refuse, before anything starts, what this machine cannot really run: its guests are Linux kernels from
    Debian packages, so a Windows workload would only be imitated by a Linux VM."""
    windows = [p.name for p in plan.placements if p.workload.os == "windows"]
    if windows:
        raise BackendError(f"workload(s) {', '.join(windows)} need Windows, which the local target cannot boot "
                           "(its guests are Debian Linux kernels): use --target kubernetes with a Windows disk "
                           "(vm.disk.pvc or vm.disk.image), or remove them from the stack")


def _side_of(runtime: Runtime, sandbox_vm: bool) -> str:
    """Which side runs a placement: "vms" for vm/nested and for a sandboxed one in its own VM, else "containers"."""
    return "vms" if runtime in VM_RUNTIMES or (runtime is Runtime.SANDBOXED and sandbox_vm) else "containers"


def _in_plan_order(plan: Plan, results: list[WorkloadStatus]) -> list[WorkloadStatus]:
    order = {p.name: i for i, p in enumerate(plan.placements)}
    return sorted(results, key=lambda s: order.get(s.name, len(order)))
