"""What hybridorch runs as local VMs, read from the state records the QEMU backend keeps beside each one and from
the labels of the libvirt domains (a run killed before it recorded its VM leaves a domain and no record): the VMs
`ps` lists and `gc` removes, and what the live audit reads of one stack's VMs (the QEMU backend's inventory side)."""
from __future__ import annotations

import shutil
from pathlib import Path

from hybridorch.backends.base import LiveFacts, LiveVM, Made, Managed, Removal
from hybridorch.core.labels import (LABEL_MANAGED, LABEL_OWNER, LABEL_REPLICA, LABEL_RUNTIME, LABEL_STACK, LABEL_TTL,
                                    LABEL_WORKLOAD, MANAGED_BY, replica_dir)
from hybridorch.core.runtime import Runtime, runtime_of
from hybridorch.errors import BackendError
from hybridorch.vm import libvirt
from hybridorch.vm.host import read_state, running_vm_states, state_root


def managed_vms() -> list[Managed]:
    """Every local VM whose QEMU process is alive, whatever stack it belongs to: those the backend recorded, and
    the running domains with a stack's labels that no record names."""
    recorded = running_vm_states()
    # owner and ttl as the backend recorded them beside the VM (they are also labels in the domain's metadata)
    out = [Managed("local", Made.VM, workdir.name, "", str(st.get("stack", "")), str(st.get("workload", "")),
                   runtime_of(st.get("runtime", Runtime.VM)), st.get("owner"), st.get("ttl"), st.get("started"))
           for workdir, st in recorded]
    known = {str(st.get("domain", "")) for _, st in recorded}
    for dom in _stack_domains():
        if dom.running and dom.name not in known:
            labels = dom.labels
            out.append(Managed("local", Made.VM, _replica_dir(dom), "", labels[LABEL_STACK],
                               labels.get(LABEL_WORKLOAD, ""), runtime_of(labels.get(LABEL_RUNTIME, Runtime.VM)),
                               labels.get(LABEL_OWNER), labels.get(LABEL_TTL), dom.started))
    return out


def _stack_domains(stack: str = "") -> list[libvirt.Domain]:
    """The libvirt domains carrying a stack's labels (`stack`'s, or any); none when libvirt is not installed or
    does not answer: then only the records name VMs (and none of them can run)."""
    if not shutil.which("virsh"):
        return []
    try:
        found = libvirt.domains(**{LABEL_MANAGED: MANAGED_BY})
    except BackendError:
        return []
    return [d for d in found if d.labels.get(LABEL_STACK) and (not stack or d.labels[LABEL_STACK] == stack)]


def _replica_dir(dom: libvirt.Domain) -> str:
    """The state dir a domain's replica has (or would have), from its labels."""
    try:
        replica = int(dom.labels.get(LABEL_REPLICA) or 0)
    except ValueError:
        replica = 0
    return replica_dir(dom.labels.get(LABEL_WORKLOAD) or dom.name, replica)


def remove_vms(items: list[Managed]) -> Removal:
    """The VMs among `items`, one replica at a time (domain and state dir, as `down`). A local VM holds no data
    to keep: its overlay is rebuilt on every start."""
    return Removal(tuple(f"vm {m.stack}/{m.name}" for m in items
                         if m.kind == Made.VM and remove_vm(state_root() / m.stack / m.name)))


def remove_vm(workdir: Path) -> bool:
    """One replica's VM, by its state dir: the domain is destroyed and undefined and the state dir goes, as
    `down` does for the whole stack; without a record, the domains whose labels name this stack and replica.
    False when no such VM was found."""
    state = read_state(workdir)   # bounded and never blocking: a FIFO there must not stall gc
    if state is not None and isinstance(state.get("domain"), str) and state["domain"]:
        names = [state["domain"]]
    else:
        names = [d.name for d in _stack_domains(workdir.parent.name) if _replica_dir(d) == workdir.name]
    if not names:
        return False
    for name in names:
        libvirt.remove(name)
    shutil.rmtree(workdir, ignore_errors=True)
    return True


def live_vms(stack: str) -> LiveFacts:
    """The stack's running VMs with the state record the live audit checks."""
    return LiveFacts(vms=tuple(LiveVM(str(state.get("workload", "")), state)
                               for _, state in running_vm_states(stack)))
