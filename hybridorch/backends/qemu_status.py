"""What the local VM backend reads back from its running guests: readiness (the guest's marker, a spec marker,
or the service answering on its forwarded port) and a workload's status from its replicas' state."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.core.runtime import LocalSandbox, Runtime, State, readiness_port
from hybridorch.render.domain import Forward
from hybridorch.vm import console
from hybridorch.vm.boot import GuestVM, last_lines, port_answers, service_answers
from hybridorch.backends.base import WorkloadStatus
from hybridorch.backends.events import Event, EventKind

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.core.policy import Placement
    from hybridorch.core.spec import Workload


def ready_forward(w: Workload, forwards: tuple[Forward, ...]) -> Forward | None:
    """The forward of the port a readiness probe connects to (runtime.readiness_port)."""
    port = readiness_port(w)
    return next((f for f in forwards if f.guest_port == port), None) if port else None


def sandbox_reason(plan: Plan) -> str:
    """Why a sandboxed placement runs in its own VM here (this backend gets one only when it does)."""
    if plan.profile.local_sandbox is LocalSandbox.VM:
        return "the policy's localSandbox: vm"
    return "no gVisor/Kata runtime in Docker"


def vm_ready(vm: GuestVM, w: Workload, booted_disk: bool = False) -> bool:
    """The busybox guest prints the ready marker; a booted disk's OS is ready only when its own service
    answers on the forwarded ready port (or its console shows the spec's marker)."""
    text = vm.console()
    marker = w.ready.marker if w.ready and w.ready.marker else None
    if marker and marker not in text:
        return False
    if not marker and not booted_disk and not console.shows_ready(text):
        return False
    port = ready_forward(w, vm.forwards)
    if booted_disk and port is None and not marker:
        return vm.running()
    # a disk's own OS brings its network up after boot: only a reply shows its service is there
    answers = service_answers if booted_disk and not marker else port_answers
    return port is None or answers(port.host_port, port.host_addr)


def wait_vm_ready(vm: GuestVM, w: Workload, timeout: float, events: Callable[[Event], None],
                  label: str | None = None, booted_disk: bool = False) -> None:
    """Wait until vm_ready (within the spec's ready.timeout, else `timeout`); a VM that exits or stays not ready
    is stopped and reported with its last console lines."""
    limit = float(w.ready.timeout) if w.ready else timeout
    label = label or w.name
    replica = "" if label == w.name else f" ({label})"
    if proc.wait_until(lambda: vm_ready(vm, w, booted_disk), limit, poll=0.05,
                       abort=lambda: not vm.running() or bool(console.exited_services(vm.console()))):
        events(Event(w.name, EventKind.READY, f"libvirt domain {vm.name}" + replica))
        return
    stopped = console.exited_services(vm.console())
    if stopped:
        name, rc = stopped[0]
        events(Event(w.name, EventKind.FAILED, f"container {name} failed in the VM (exit code {rc})" + replica))
        vm.stop()
        raise BackendError(f"VM {label}: its container {name} failed with exit code {rc} before the VM was "
                           f"ready (stopped the VM); last console lines: {last_lines(vm.console())}")
    exited = not vm.running()
    events(Event(w.name, EventKind.FAILED, ("exited during boot" if exited else
                                            f"not ready within {limit:.0f}s") + replica))
    if exited:
        error = vm.qemu_error()
        vm.stop()
        raise BackendError(f"VM {label} exited during boot: "
                           f"{error or 'last console lines: ' + last_lines(vm.console())}")
    vm.stop()
    raise BackendError(f"VM {label} was not ready within {limit:.0f}s (stopped it); last console "
                       f"lines: {last_lines(vm.console())}")


def replicas_status(plan: Plan, p: Placement, loaded: list[tuple[int, str, GuestVM, dict[str, Any]]],
                    known_ready: set[str]) -> WorkloadStatus:
    """One workload's row from its replicas found running here: (replica, state dir name, VM, state.json);
    `known_ready` names the replica state dirs `up` just waited for."""
    w = p.workload
    if not loaded:
        return WorkloadStatus(p.name, p.runtime, State.ABSENT, detail="not created: run `hybridorch up`")
    ports = tuple(str(Forward(*f)) for *_, state in loaded for f in state.get("forwards", []))
    state0 = loaded[0][3]
    accel = state0.get("accelerator")
    booted_disk = state0.get("guest") == "disk"
    what_boots = (f"its own disk {state0.get('disk')}" if state0.get("guest") == "disk" else
                  "the busybox guest (no disk or image named)")
    alive = [(i, name, vm) for i, name, vm, _ in loaded if vm.owns()]
    counts = f"{len(alive)}/{w.replicas} replicas running"
    dead = [(i, vm) for i, _, vm, _ in loaded if not vm.owns()]
    if dead:
        i, vm = dead[0]
        what = "domain " + vm.name
        return WorkloadStatus(p.name, p.runtime, State.FAILED, ports, accel,
                              detail=f"{counts}; {what} is not running; last console lines: "
                                     f"{last_lines(vm.console(), 3)}")
    for _, _, vm in alive:
        stopped = console.exited_services(vm.console())
        if stopped:
            return WorkloadStatus(p.name, p.runtime, State.FAILED, ports, accel,
                                  detail=f"{counts}; container {stopped[0][0]} in domain {vm.name} failed "
                                         f"(exit code {stopped[0][1]}); last console lines: "
                                         f"{last_lines(vm.console(), 3)}")
    pids = [vm.pid for _, _, vm in alive]
    domains = ', '.join(vm.name for _, _, vm in alive)
    if p.runtime is Runtime.SANDBOXED:
        # the words `status` users and tests look for: where the sandbox is, and why
        detail = f"{counts}; sandboxed in its own VM ({state0.get('sandbox') or sandbox_reason(plan)}): " \
                 f"libvirt domain {domains} ({state0['arch']}) runs image {w.image} with runc on the " \
                 "guest's kernel; pid " + ", ".join(str(pid) for pid in pids)
    else:
        detail = f"{counts}; libvirt domain {domains} ({state0['arch']}) boots {what_boots}; pid " + \
            ", ".join(str(pid) for pid in pids)
    if len(alive) < w.replicas:
        phase = State.PENDING
    else:
        ready = all(name in known_ready or vm_ready(vm, w, booted_disk) for _, name, vm in alive)
        phase = State.READY if ready else State.RUNNING
    started = min(st["started"] for *_, st in loaded)
    return WorkloadStatus(p.name, p.runtime, phase, ports, accel,
                          uptime_seconds=time.time() - started, detail=detail,
                          extra={"pid": pids[0], "pids": pids, "domain": alive[0][2].name,
                                 "guest": state0.get("guest", "busybox"),
                                 **({"sandbox": "vm"} if p.runtime is Runtime.SANDBOXED else {})})
