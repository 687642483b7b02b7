"""The libvirt engine: define, start, find, stop and remove domains through `virsh` against the system daemon.

virsh rather than the Python bindings: the rendered domain file is handed over as it is (`virsh define FILE`,
the command a user would type to reproduce it), and nothing has to be compiled against libvirt-dev for the
project's Python. Domains are found by the hybridorch labels in their <metadata>, never by name guessing.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.render.domain import XMLNS_LABELS

START_HINT = "start it with e2e/setup.d/15-libvirt.sh (virtlogd -d; libvirtd -d)"


def uri() -> str:
    return os.environ.get("HYBRIDORCH_LIBVIRT_URI", "qemu:///system")


def virsh(*args: str, what: str, check: bool = True, timeout: float = 120) -> str:
    result = proc.run(["virsh", "-q", "-c", uri(), *args], what=what, check=False, timeout=timeout,
                      missing="apt-get install libvirt-clients")
    if check and result.returncode != 0:
        error = proc.last_line(result.stderr)
        if "Failed to connect socket" in error or "failed to connect to the hypervisor" in error:
            raise BackendError(f"{what}: the libvirt daemon does not answer on {uri()}: {START_HINT}")
        raise BackendError(f"{what}: {error or 'virsh exited with ' + str(result.returncode)}")
    return result.stdout if result.returncode == 0 else ""


def check_daemon() -> None:
    virsh("version", what="libvirt")


@dataclass(frozen=True)
class Domain:
    name: str
    labels: dict[str, str]
    running: bool
    xml: str = ""     # its definition as libvirt keeps it (dumpxml)

    @property
    def pid(self) -> int | None:
        try:
            return int(Path(f"/run/libvirt/qemu/{self.name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def started(self) -> float | None:
        """When libvirt started its QEMU (the pid file it writes then); None when it does not run."""
        try:
            return Path(f"/run/libvirt/qemu/{self.name}.pid").stat().st_mtime if self.running else None
        except OSError:
            return None


def labels_of(xml: str) -> dict[str, str]:
    """The hybridorch labels in a domain's <metadata> (empty for a domain that is not ours)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    return {e.get("key", ""): e.get("value", "") for e in root.iter(f"{{{XMLNS_LABELS}}}label")}


def domains(**wanted: str) -> list[Domain]:
    """Every domain (running or only defined) whose labels include `wanted` (label keys with '/' and '.' as
    given by the caller through a dict), e.g. domains(**{"hybridorch.dev/stack": "shop"})."""
    out = []
    running = set(virsh("list", "--name", what="libvirt: list domains").split())
    for name in virsh("list", "--all", "--name", what="libvirt: list domains").split():
        xml = virsh("dumpxml", name, what=f"libvirt: read domain {name}", check=False)
        labels = labels_of(xml)
        if labels and all(labels.get(k) == v for k, v in wanted.items()):
            out.append(Domain(name, labels, name in running, xml))
    return out


def get(name: str) -> Domain | None:
    xml = virsh("dumpxml", name, what=f"libvirt: read domain {name}", check=False)
    if not xml:
        return None
    state = virsh("domstate", name, what=f"libvirt: state of {name}", check=False).strip()
    return Domain(name, labels_of(xml), state == "running", xml)


def remove(name: str) -> bool:
    """Destroy (if running) and undefine one domain; True if it was running."""
    dom = get(name)
    if dom is None:
        return False
    if dom.running:
        virsh("destroy", name, what=f"libvirt: stop domain {name}", check=False)
    virsh("undefine", name, what=f"libvirt: remove domain {name}", check=False)
    return dom.running


_NAME = re.compile(r"<name>([^<]+)</name>")


def name_in(xml: str) -> str:
    """The domain name a domain XML defines ("" when it names none)."""
    match = _NAME.search(xml)
    return match.group(1) if match else ""


# libvirt's memory units, as its domain format defines them
_UNITS = {"b": 1, "bytes": 1, "kb": 10**3, "k": 2**10, "kib": 2**10, "mb": 10**6, "m": 2**20, "mib": 2**20,
          "gb": 10**9, "g": 2**30, "gib": 2**30, "tb": 10**12, "t": 2**40, "tib": 2**40}
_QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def boot_facts(xml: str) -> tuple[object, ...] | None:
    """What makes a domain the one a file defines: its name, labels, size, what it boots, its disks, console and
    network arguments, read alike from the rendered file and from libvirt's dumpxml of the domain defined from it
    (libvirt adds ids, addresses and defaults, spells memory in KiB and expands the machine alias, so the texts
    differ). None when the XML does not parse."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None

    def text(path: str) -> str:
        found = root.find(path)
        return (found.text or "").strip() if found is not None else ""

    def attr(path: str, name: str, under: ET.Element = root) -> str | None:
        found = under.find(path)
        return found.get(name) if found is not None else None

    try:
        memory = int(text("memory")) * _UNITS[(attr("memory", "unit") or "KiB").lower()]
    except (ValueError, KeyError):
        memory = -1
    disks = tuple((d.get("device"), attr("source", "file", d), attr("target", "dev", d), d.find("readonly") is not None)
                  for d in root.findall("devices/disk"))
    return (root.get("type"), text("name"), tuple(sorted(labels_of(xml).items())), memory, text("vcpu"),
            attr("os/type", "arch"), text("os/kernel"), text("os/initrd"), text("os/cmdline"), text("devices/emulator"),
            disks, tuple(s.get("path") for s in root.findall("devices/serial/source")),
            tuple(a.get("value") for a in root.iter(f"{_QEMU_NS}arg")),
            text("cputune/period"), text("cputune/quota"), text("seclabel/label"))


def same_boot(rendered: str, defined: str) -> bool:
    """The domain libvirt holds (`defined`, its dumpxml) was defined from the `rendered` file."""
    facts = boot_facts(rendered)
    return facts is not None and facts == boot_facts(defined)


def define_and_start(xml_file: Path) -> str:
    """`virsh define` the file, then `virsh start` it: the domain stays listed (virsh list --all, virt-manager)
    until `remove`. A stale domain of the same name (an earlier run that died) is replaced."""
    name = name_in(xml_file.read_text())
    if not name:
        raise BackendError(f"{xml_file}: no <name> in the domain XML")
    remove(name)
    virsh("define", str(xml_file), what=f"libvirt: define {name}")
    try:
        virsh("start", name, what=f"libvirt: start {name}")
    except BaseException:
        remove(name)   # Ctrl-C while `virsh start` ran: the domain may be running already
        raise
    return name


def create_transient(xml_file: Path) -> str:
    """`virsh create`: a domain that exists only while it runs (soc-test boards, the KVM probe)."""
    match = _NAME.search(xml_file.read_text())
    name = match.group(1) if match else "?"
    virsh("destroy", name, what="libvirt", check=False)
    virsh("create", str(xml_file), what=f"libvirt: boot {name}")
    return name


def is_running(name: str) -> bool:
    return virsh("domstate", name, what="libvirt", check=False).strip() == "running"


# QEMU's `info usernet` row of a forward: TCP[HOST_FORWARD]  FD  host-address host-port  guest-address guest-port ...
_USERNET_FORWARD = re.compile(r"TCP\[HOST_FORWARD\]\s+\d+\s+\S+\s+(\d+)\s+\S+\s+(\d+)")


def usernet_ports(text: str) -> dict[int, int]:
    """guest port -> the host port QEMU bound for it, from `info usernet` (a forward asked with port 0 gets a free
    one, as `docker run -P` does)."""
    return {int(guest): int(host) for host, guest in _USERNET_FORWARD.findall(text)}


def bound_ports(name: str) -> dict[int, int]:
    """usernet_ports of a running domain, asked through libvirt's monitor passthrough."""
    return usernet_ports(virsh("qemu-monitor-command", name, "--hmp", "info usernet",
                               what=f"libvirt: read the port forwards of {name}"))


# --- snapshots (hybridorch/snapshots.py) -----------------------------------------------------------------------
# Internal qcow2 snapshots taken by libvirt (disk and, for a running domain, memory). libvirt's own record of a
# snapshot is dropped right after it is taken and kept as XML beside the overlay instead: a domain with snapshot
# metadata cannot be undefined by `remove`, and the snapshot itself lives inside the overlay either way.

def snapshot_create(name: str, snap: str, record: Path) -> None:
    """Take internal snapshot `snap` of domain `name` (the read-only NoCloud seed is left out, as libvirt does
    for read-only disks) and write libvirt's description of it to `record`."""
    virsh("snapshot-create-as", name, snap, "--atomic", what=f"libvirt: snapshot {name}", timeout=300)
    try:
        record.write_text(virsh("snapshot-dumpxml", name, snap, "--security-info",
                                what=f"libvirt: describe snapshot {snap} of {name}"))
    finally:
        virsh("snapshot-delete", name, snap, "--metadata", what=f"libvirt: snapshot {snap} of {name}", check=False)


def _with_record(name: str, snap: str, record: Path, *args: str, what: str) -> None:
    """Run `virsh ARGS` with the snapshot's record defined again for the call, and dropped after it."""
    virsh("snapshot-create", name, str(record), "--redefine", what=f"libvirt: snapshot {snap} of {name}")
    try:
        virsh(*args, what=what, timeout=300)
    finally:
        virsh("snapshot-delete", name, snap, "--metadata", what=f"libvirt: snapshot {snap} of {name}", check=False)


def snapshot_revert(name: str, snap: str, record: Path) -> None:
    """Roll domain `name` back to `snap`: its disk, and its memory when the snapshot was taken running."""
    _with_record(name, snap, record, "snapshot-revert", name, snap, what=f"libvirt: revert {name} to {snap}")


def snapshot_delete(name: str, snap: str, record: Path) -> None:
    _with_record(name, snap, record, "snapshot-delete", name, snap, what=f"libvirt: delete snapshot {snap} of {name}")


def start(name: str) -> None:
    virsh("start", name, what=f"libvirt: start {name}")
