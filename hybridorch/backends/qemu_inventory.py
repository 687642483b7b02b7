"""What hybridorch runs as local VMs, read from the state records the QEMU backend keeps beside each one: the VMs
`ps` lists and `gc` removes, and what the live audit reads of one stack's VMs (the QEMU backend's inventory side)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from hybridorch.backends.base import LiveFacts, LiveVM, Made, Managed, Removal
from hybridorch.core.runtime import Runtime, runtime_of
from hybridorch.vm import libvirt
from hybridorch.vm.host import running_vm_states, state_root


def managed_vms() -> list[Managed]:
    """Every local VM whose QEMU process is alive, whatever stack it belongs to."""
    # owner and ttl as the backend recorded them beside the VM (they are also labels in the domain's metadata)
    return [Managed("local", Made.VM, workdir.name, "", str(st.get("stack", "")), str(st.get("workload", "")),
                    runtime_of(st.get("runtime", Runtime.VM)), st.get("owner"), st.get("ttl"), st.get("started"))
            for workdir, st in running_vm_states()]


def remove_vms(items: list[Managed]) -> Removal:
    """The VMs among `items`, one replica at a time (domain and state dir, as `down`). A local VM holds no data
    to keep: its overlay is rebuilt on every start."""
    return Removal(tuple(f"vm {m.stack}/{m.name}" for m in items
                         if m.kind == Made.VM and remove_vm(state_root() / m.stack / m.name)))


def remove_vm(workdir: Path) -> bool:
    """One replica's VM, by its state dir: the domain is destroyed and undefined and the state dir goes, as
    `down` does for the whole stack. False when no such VM was recorded."""
    try:
        state = json.loads((workdir / "state.json").read_text())
    except (OSError, ValueError):
        return False
    libvirt.remove(str(state.get("domain", "")))
    shutil.rmtree(workdir, ignore_errors=True)
    return True


def live_vms(stack: str) -> LiveFacts:
    """The stack's running VMs with the state record the live audit checks."""
    return LiveFacts(vms=tuple(LiveVM(str(state.get("workload", "")), state)
                               for _, state in running_vm_states(stack)))
