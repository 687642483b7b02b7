"""The stack spec: parse `kind: Stack` YAML into frozen, typed objects, reporting every error with file and line.

Nothing downstream re-validates input; what leaves this module is known to be well formed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from hybridorch.errors import Problem, SpecError
from hybridorch.core.durations import POSITIVE as POSITIVE_DURATION
from hybridorch.core.durations import POSITIVE_WHAT, duration_problem
from hybridorch.core.labels import lifecycle_labels, replica_name
from hybridorch.core.runtime import ARCHES as ARCH_TABLE
from hybridorch.core.runtime import AUTO, CONTAINER_RUNTIMES, RUNTIMES, VM_RUNTIMES, Runtime, requested_runtime
from hybridorch.core.safeload import compose_yaml
from hybridorch.core.schema import (DNS_LABEL, DNS_LABEL_WHAT, Document, Errors, Field, ListOf, MapOf, Obj, Quantity,
                                    Scalar, check_document, parse_quantity, show)

API_VERSION = "hybridorch.dev/v1alpha1"
OSES = ("linux", "windows")
ARCHES = tuple(ARCH_TABLE)
TRUST = ("trusted", "internal", "untrusted")
REQUIREMENTS = ("privileged", "kernel-modules", "custom-kernel", "host-devices", "host-network")

_name = Scalar(str, pattern=DNS_LABEL, what=DNS_LABEL_WHAT)
_text = Scalar(str)
# Kubernetes' label syntax: a value (63 at most, may be empty) and a key with an optional DNS-subdomain prefix;
# the patterns also keep newlines out, which could otherwise forge the file headers of `render --out -`
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?"
LABEL_KEY = (r"((?=[^/]{1,253}/)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_labels = MapOf(Scalar(str, pattern=LABEL_VALUE, what="a label value (letters, digits, '-', '_', '.'; at most 63)"),
                key_pattern=LABEL_KEY, key_what="a label key: [DNS-subdomain prefix/]name, the name letters, digits, "
                                                "'-', '_', '.' (at most 63)")
# IANA service name: at most 15 of lowercase letters, digits and single '-', at least one letter
PORT_NAME = r"(?=.{1,15}$)(?=[0-9-]*[a-z])[a-z0-9]+(-[a-z0-9]+)*"
# a Service name (DNS-1035): a DNS label that starts with a letter
DNS_1035 = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
MAX_USER_DATA = 64 * 2**10
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
ENV_WHAT = "an environment variable name (letters, digits and '_', not starting with a digit)"
# The Docker/OCI image reference grammar (github.com/distribution/reference, regexp.go): [HOST[:PORT]/]PATH[:TAG]
# [@DIGEST]. A path component is lowercase letters and digits joined by '.', '_', '__' or dashes, so it can never
# be '..' (a hybridorch.local/<name> image is built from images/<name>/) nor start with '-' (an engine option).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*" \
        r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}"
IMAGE_REFERENCE = re.compile(rf"(?:(?P<host>{_HOST})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
                             rf"(?::{_TAG})?(?:@(?:{_DIGEST}))?")
MAX_IMAGE_NAME = 255  # Docker's NameTotalLengthMax: host and path together
IMAGE_WHAT = ("an image reference [host[:port]/]path[:tag][@sha256:digest], the path in lowercase letters, digits "
              "and single '.', '_' or '-', no spaces")


def image_problem(value: str) -> str | None:
    """An image reference by the Docker/OCI grammar: it cannot be mistaken for an engine option, point outside the
    recipes directory, or carry whitespace or control characters into a command line or a manifest."""
    m = IMAGE_REFERENCE.fullmatch(value) if len(value) <= 1024 else None
    if m is None:
        return f"must be {IMAGE_WHAT}"
    if m.group("host") and "." not in m.group("host") and ":" not in m.group("host") \
            and m.group("host") != "localhost" and m.group("host") != m.group("host").lower():
        return f"must be {IMAGE_WHAT} (upper case only in a registry host, which has a '.' or a ':port')"
    if len(m.group("host") or "") + len(m.group("path")) + bool(m.group("host")) > MAX_IMAGE_NAME:
        return f"the image name (registry host and path) is longer than {MAX_IMAGE_NAME} characters"
    return None


def _argv0_problem(value: str) -> str | None:
    return "starts with '-': it would be read as an option" if value.startswith("-") else None


_image = Scalar(str, validate=image_problem, what="an image reference")
_command = ListOf(_text)
_port_number = Scalar(int, minimum=1, maximum=65535, what="a port number")
# owner and ttl become label values on every object, so they follow the label-value syntax
_owner = Scalar(str, pattern=r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?",
                what="an owner usable as a label value (letters, digits, '-', '_', '.'; at most 63), e.g. team-shop")
_duration = Scalar(str, pattern=r"(?=.{1,63}$)" + POSITIVE_DURATION, what=POSITIVE_WHAT, validate=duration_problem)


PORT = Obj({
    "port": Field(_port_number, required=True, doc="Port the workload listens on."),
    "protocol": Field(Scalar(str, enum=("TCP", "UDP")), default="TCP"),
    "name": Field(Scalar(str, pattern=PORT_NAME, what="a port name (IANA service name: at most 15 lowercase letters,"
                                                      " digits and single '-', with a letter)")),
    "hostPort": Field(_port_number, doc="Port published on the host by the local target (default: same as port, "
                                        "or a free one when an earlier workload has that port)."),
    "public": Field(Scalar(bool), default=False,
                    doc="Reachable from anywhere: published on all host addresses instead of 127.0.0.1 (local "
                        "target), open to every namespace (its NetworkPolicy)."),
    "allowFrom": Field(ListOf(_name), default=list,
                       doc="Other tenants of the stack that may connect to this port (its own tenant always may)."),
}, shorthand=_port_number, shorthand_key="port", description="A port, or a bare port number.")

RESOURCES = Obj({
    "cpu": Field(Quantity("cpu"), default="250m", doc="CPU request and limit (both are always set)."),
    "memory": Field(Quantity("memory"), default="256Mi", doc="Memory request and limit (both are always set)."),
})

VOLUME = Obj({
    "name": Field(_name, required=True),
    "mountPath": Field(Scalar(str, pattern=r"/.*", what="an absolute path"), required=True),
    "size": Field(Quantity("memory"), default="1Gi"),
}, description="A persistent volume; a workload with volumes renders as a StatefulSet.")

INNER_CONTAINER = Obj({
    "name": Field(_name, required=True),
    "image": Field(_image, required=True),
    "command": Field(_command),
    "env": Field(MapOf(_text), default=dict),
    "ports": Field(ListOf(PORT), default=list),
}, description="A container run inside the VM of a `nested` workload.")

VM = Obj({
    "cpus": Field(Scalar(int, minimum=1, maximum=64), doc="vCPUs (default: the CPU resource rounded up)."),
    "machine": Field(Scalar(str, pattern=r"[a-z0-9][a-z0-9._-]{0,63}", what="a machine type such as q35 or virt"),
                     doc="QEMU/KubeVirt machine type (default: q35 on amd64, virt on arm64/riscv64)."),
    "disk": Field(Obj({
        "image": Field(_image, doc="containerDisk image holding the boot disk."),
        "pvc": Field(_name, doc="An existing PersistentVolumeClaim holding the boot disk."),
        "size": Field(Quantity("memory"), doc="Size of a DataVolume created for the boot disk."),
    })),
    "userData": Field(_text, doc="Extra cloud-init user data (a #cloud-config document)."),
    "guest": Field(Scalar(str, enum=("busybox",)), default="busybox",
                   doc="Local guest built from Debian packages (kernel + busybox initramfs)."),
})

SNAPSHOTS = Obj({
    "retain": Field(Scalar(int, minimum=1, maximum=100), default=3, doc="Snapshots kept per VM."),
    "maxAge": Field(_duration, doc="Snapshots older than this are pruned (and flagged by `hybridorch audit`)."),
}, description="Snapshot retention of a vm or nested workload.")

READY = Obj({
    "port": Field(_port_number, doc="Ready when this port accepts connections (default: the first port)."),
    "marker": Field(_text, doc="Ready when this text appears in the log/console."),
    "timeout": Field(Scalar(int, minimum=1, maximum=3600), default=120, doc="Seconds to wait for readiness."),
})

WORKLOAD = Obj({
    "name": Field(_name, required=True, doc="DNS-1123 label, unique in the stack."),
    "image": Field(_image, doc="Container image (container, sandboxed) or containerDisk image (vm)."),
    "command": Field(_command, doc="Entrypoint override."),
    "args": Field(ListOf(_text)),
    "env": Field(MapOf(_text, key_pattern=ENV_NAME, key_what=ENV_WHAT), default=dict),
    "ports": Field(ListOf(PORT), default=list),
    "replicas": Field(Scalar(int, minimum=0, maximum=1000), default=1),
    "resources": Field(RESOURCES, default=lambda: {"cpu": "250m", "memory": "256Mi"}),
    "os": Field(Scalar(str, enum=OSES), default="linux"),
    "arch": Field(Scalar(str, enum=ARCHES), default="amd64"),
    "trust": Field(Scalar(str, enum=TRUST), default="internal",
                   doc="trusted: our own code; internal: another team's; untrusted: third-party or user code."),
    "tenant": Field(_name, doc="Isolation boundary (namespace/network); default: the stack name."),
    "allowFrom": Field(ListOf(_name), default=list,
                       doc="Other tenants of the stack that may connect to every port of this workload."),
    "requires": Field(ListOf(Scalar(str, enum=REQUIREMENTS)), default=list),
    "writableRoot": Field(Scalar(bool), default=False,
                          doc="The container writes outside its volumes and /tmp: give it a writable root filesystem "
                              "instead of the read-only one every non-privileged container gets (local Docker and "
                              "Kubernetes alike)."),
    "runtime": Field(Scalar(str, enum=(AUTO,) + RUNTIMES), default=AUTO),
    "volumes": Field(ListOf(VOLUME), default=list),
    "containers": Field(ListOf(INNER_CONTAINER, min_items=1), doc="Containers run inside the VM (nested)."),
    "vm": Field(VM, doc="VM settings for vm and nested placements."),
    "ready": Field(READY, doc="How the local target decides the workload is ready."),
    "labels": Field(_labels, default=dict),
    "owner": Field(_owner, doc="Who answers for this workload (default: metadata.owner); a label on what runs."),
    "ttl": Field(_duration, doc="How long it may run (default: metadata.ttl); `hybridorch audit --live` flags it after."),
    "snapshots": Field(SNAPSHOTS, doc="Snapshot retention (vm and nested workloads)."),
})

HOST_POOL = Obj({
    "name": Field(_name, required=True),
    "os": Field(Scalar(str, enum=OSES), default="linux"),
    "arch": Field(Scalar(str, enum=ARCHES), default="amd64"),
    "virtualization": Field(Scalar(bool), default=True, doc="Hardware virtualisation (KVM) is available."),
    # a host below these runs nothing, and a capacity that rounds to zero would break the packing arithmetic
    "cpu": Field(Quantity("cpu", minimum="100m"), default="8"),
    "memory": Field(Quantity("memory", minimum="64Mi"), default="32Gi"),
    "count": Field(Scalar(int, minimum=1, maximum=10000), default=10, doc="Hosts available in this pool."),
    "idleWatts": Field(Scalar(int, minimum=0, maximum=100000), doc="Power of one idle host (`capacity`)."),
    "peakWatts": Field(Scalar(int, minimum=1, maximum=100000), doc="Power of one host at full CPU (`capacity`)."),
    "labels": Field(_labels, default=dict),
})

STACK = Obj({
    "apiVersion": Field(Scalar(str, enum=(API_VERSION,)), required=True),
    "kind": Field(Scalar(str, enum=("Stack",)), required=True),
    "metadata": Field(Obj({"name": Field(_name, required=True), "labels": Field(_labels, default=dict),
                           "owner": Field(_owner, doc="Default owner of every workload."),
                           "ttl": Field(_duration, doc="Default time to live of every workload.")}),
                      required=True),
    "spec": Field(Obj({
        "policy": Field(_text, default="balanced", doc="secure | balanced | efficient, or a policy file path."),
        "hosts": Field(ListOf(HOST_POOL, min_items=1), doc="Host pools (default: linux/amd64 with KVM)."),
        "workloads": Field(ListOf(WORKLOAD, min_items=1), required=True),
    }), required=True),
}, description="A hybridorch stack: workloads to place as containers, sandboxed containers, VMs or nested.")


HOSTS_FILE = Obj({
    "apiVersion": Field(Scalar(str, enum=(API_VERSION,)), required=True),
    "kind": Field(Scalar(str, enum=("Hosts",)), required=True),
    "metadata": Field(Obj({"name": Field(_name, required=True)}), required=True),
    "spec": Field(Obj({"pools": Field(ListOf(HOST_POOL, min_items=1), required=True)}), required=True),
}, description="A description of the hosts or cluster node pools workloads are placed on.")


# --- typed model ---------------------------------------------------------------------------------

def cpu_millis(quantity: str) -> int:
    value = parse_quantity(quantity)
    assert value is not None  # checked at load time
    return int(value * 1000)


def memory_bytes(quantity: str) -> int:
    value = parse_quantity(quantity)
    assert value is not None
    return int(value)


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str = "TCP"
    name: str | None = None
    host_port: int | None = None
    public: bool = False
    # tenants of the stack besides the workload's own that may connect (the workload's allowFrom included)
    allow_from: tuple[str, ...] = ()

    @property
    def published(self) -> int:
        return self.host_port or self.port


@dataclass(frozen=True)
class Resources:
    cpu: str = "250m"
    memory: str = "256Mi"

    @property
    def cpu_millis(self) -> int:
        return cpu_millis(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return memory_bytes(self.memory)


@dataclass(frozen=True)
class Volume:
    name: str
    mount_path: str
    size: str = "1Gi"


@dataclass(frozen=True)
class InnerContainer:
    name: str
    image: str
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class VmSettings:
    cpus: int | None = None
    machine: str | None = None
    disk_image: str | None = None
    disk_pvc: str | None = None
    disk_size: str | None = None
    user_data: str | None = None
    guest: str = "busybox"


@dataclass(frozen=True)
class Snapshots:
    retain: int = 3
    max_age: str | None = None


@dataclass(frozen=True)
class Readiness:
    port: int | None = None
    marker: str | None = None
    timeout: int = 120


@dataclass(frozen=True)
class Workload:
    name: str
    image: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    replicas: int = 1
    resources: Resources = Resources()
    os: str = "linux"
    arch: str = "amd64"
    trust: str = "internal"
    tenant: str = "default"
    allow_from: tuple[str, ...] = ()  # workload-wide; every Port.allow_from already includes it
    requires: tuple[str, ...] = ()
    writable_root: bool = False       # opts out of the read-only root filesystem (runtime.read_only_root)
    runtime: Runtime | None = None    # the spec's explicit runtime; None: auto, the policy decides
    volumes: tuple[Volume, ...] = ()
    containers: tuple[InnerContainer, ...] = ()
    vm: VmSettings = VmSettings()
    ready: Readiness | None = None
    # the user's labels plus the owner/ttl labels (labels.lifecycle_labels), so everything that runs carries them
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: str | None = None          # resolved: the workload's own, else metadata.owner
    ttl: str | None = None            # resolved likewise
    snapshots: Snapshots | None = None
    # where each field was written, for errors found after loading (policy contradictions)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    index: int = field(default=-1, compare=False, repr=False)  # position in stack.workloads (-1: not loaded)

    def line(self, fld: str = "") -> int:
        return self.lines.get(fld) or self.lines.get("", 0)

    @property
    def vcpus(self) -> int:
        return self.vm.cpus or max(1, math.ceil(self.resources.cpu_millis / 1000))


@dataclass(frozen=True)
class HostPool:
    name: str
    os: str = "linux"
    arch: str = "amd64"
    virtualization: bool = True
    cpu: str = "8"
    memory: str = "32Gi"
    count: int = 10
    labels: Mapping[str, str] = field(default_factory=dict)
    idleWatts: int | None = None   # spelled as in the file: pools are built with HostPool(**fields)
    peakWatts: int | None = None

    @property
    def cpu_millis(self) -> int:
        return cpu_millis(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return memory_bytes(self.memory)


DEFAULT_HOSTS = (HostPool(name="default"),)


@dataclass(frozen=True)
class Stack:
    name: str
    file: str
    policy: str = "balanced"
    hosts: tuple[HostPool, ...] = DEFAULT_HOSTS
    workloads: tuple[Workload, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    policy_line: int = 0
    owner: str | None = None
    ttl: str | None = None

    def workload(self, name: str) -> Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)


# --- loading -------------------------------------------------------------------------------------

def _port(v: dict[str, Any], allow_from: tuple[str, ...] = ()) -> Port:
    return Port(port=v["port"], protocol=v["protocol"], name=v.get("name"), host_port=v.get("hostPort"),
                public=v["public"], allow_from=tuple(dict.fromkeys(allow_from + tuple(v.get("allowFrom") or ()))))


def _tuple(v: list[str] | None) -> tuple[str, ...] | None:
    return None if v is None else tuple(v)


def _workload(v: dict[str, Any], stack_name: str, lines: dict[str, int], meta: dict[str, Any],
              index: int = -1) -> Workload:
    vm = v.get("vm") or {}
    owner, ttl = v.get("owner") or meta.get("owner"), v.get("ttl") or meta.get("ttl")
    snaps = v.get("snapshots")
    disk = vm.get("disk") or {}
    ready = v.get("ready")
    return Workload(
        name=v["name"], image=v.get("image"), command=_tuple(v.get("command")), args=_tuple(v.get("args")),
        env=dict(v["env"]), ports=tuple(_port(p, tuple(v.get("allowFrom") or ())) for p in v["ports"]),
        replicas=v["replicas"], allow_from=tuple(dict.fromkeys(v.get("allowFrom") or ())),
        resources=Resources(**v["resources"]), os=v["os"], arch=v["arch"], trust=v["trust"],
        tenant=v.get("tenant") or stack_name, requires=tuple(dict.fromkeys(v["requires"])),
        writable_root=v["writableRoot"], runtime=requested_runtime(v["runtime"]),
        volumes=tuple(Volume(x["name"], x["mountPath"], x["size"]) for x in v["volumes"]),
        containers=tuple(InnerContainer(c["name"], c["image"], _tuple(c.get("command")), dict(c["env"]),
                                        tuple(_port(p) for p in c["ports"])) for c in v.get("containers") or ()),
        vm=VmSettings(cpus=vm.get("cpus"), machine=vm.get("machine"), disk_image=disk.get("image"),
                      disk_pvc=disk.get("pvc"), disk_size=disk.get("size"), user_data=vm.get("userData"),
                      guest=vm.get("guest") or "busybox"),
        ready=Readiness(ready.get("port"), ready.get("marker"), ready["timeout"]) if ready else None,
        labels={**v["labels"], **lifecycle_labels(owner, ttl)}, owner=owner, ttl=ttl,
        snapshots=Snapshots(snaps["retain"], snaps.get("maxAge")) if snaps else None, lines=lines, index=index)


def _check_workload(w: dict[str, Any], path: str, doc: Document, errors: Errors) -> None:
    """Checks that need several fields of one workload."""
    runtime = requested_runtime(w["runtime"])
    if w.get("containers") and runtime not in (None, Runtime.NESTED):
        errors.add(doc.line(f"{path}.containers"), f"{path}.containers",
                   "inner containers need runtime nested (or auto)")
    if runtime is Runtime.NESTED and not w.get("containers"):
        errors.add(doc.line(f"{path}.runtime"), f"{path}.runtime", "runtime nested needs a `containers` list")
    if runtime in CONTAINER_RUNTIMES and w.get("snapshots"):
        errors.add(doc.line(f"{path}.snapshots"), f"{path}.snapshots",
                   "snapshots need a VM: runtime vm or nested")
    if runtime in CONTAINER_RUNTIMES and not w.get("image"):
        errors.add(doc.line(path), f"{path}.image", "a container or sandboxed runtime needs an image")
    if runtime is Runtime.VM and w.get("writableRoot"):
        errors.add(doc.line(f"{path}.writableRoot"), f"{path}.writableRoot",
                   "writableRoot is about a container's root filesystem; a VM's disk is its own")
    if runtime is None and not w.get("image") and not w.get("containers") and not w.get("vm"):
        errors.add(doc.line(path), f"{path}.image", "an image is required (or `vm`/`containers` settings)")
    if w["os"] == "windows" and w["arch"] == "riscv64":
        errors.add(doc.line(f"{path}.arch"), f"{path}.arch", "there is no Windows for riscv64")
    if w["os"] == "windows" and w.get("containers"):
        errors.add(doc.line(f"{path}.containers"), f"{path}.containers",
                   "nested containers run in a Linux guest; os must be linux")
    seen: dict[tuple[int, str], int] = {}
    for i, p in enumerate(w["ports"]):
        if p is None:
            continue
        key = (p["port"], p["protocol"])
        if key in seen:
            errors.add(doc.line(f"{path}.ports[{i}]"), f"{path}.ports[{i}]",
                       f"the same port and protocol as {path}.ports[{seen[key]}]")
        seen.setdefault(key, i)
    _check_unique_names(w["volumes"], f"{path}.volumes", "volume name", doc, errors)
    disk = ((w.get("vm") or {}).get("disk") or {})
    if disk.get("image") and disk.get("pvc"):
        errors.add(doc.line(f"{path}.vm.disk"), f"{path}.vm.disk", "give either image or pvc, not both")
    ready = w.get("ready") or {}
    if ready.get("port") and ready["port"] not in {p["port"] for p in w["ports"] if p}:
        errors.add(doc.line(f"{path}.ready.port"), f"{path}.ready.port",
                   "must be one of the workload's ports")
    _check_rendered_names(w, path, doc, errors)
    _check_argv0(w.get("command"), f"{path}.command", doc, errors)
    for i, c in enumerate(w.get("containers") or ()):
        if c:
            _check_argv0(c.get("command"), f"{path}.containers[{i}].command", doc, errors)
    user_data = (w.get("vm") or {}).get("userData")
    if user_data is not None:
        message = _user_data_problem(user_data)
        if message:
            errors.add(doc.line(f"{path}.vm.userData"), f"{path}.vm.userData", message)


def _check_argv0(command: list[str] | None, path: str, doc: Document, errors: Errors) -> None:
    """The first word of a command follows the image on the engine's command line (podman run ... IMAGE CMD)."""
    if command and command[0] is not None:
        message = _argv0_problem(command[0])
        if message:
            errors.add(doc.line(f"{path}[0]"), f"{path}[0]", message)


def _check_rendered_names(w: dict[str, Any], path: str, doc: Document, errors: Errors) -> None:
    """Names that become Kubernetes names must be valid there too: a workload with ports gets a Service (DNS-1035:
    a letter first), and the port names of one workload (its inner containers' included) are unique."""
    ports = [p for p in w["ports"] if p]
    inner = [(f"{path}.containers[{i}]", p) for i, c in enumerate(w.get("containers") or ()) if c
             for p in c["ports"] if p]
    if (ports or inner) and w["name"] and not re.fullmatch(DNS_1035, w["name"]):
        errors.add(doc.line(f"{path}.name"), f"{path}.name",
                   "the workload gets a Service (it has ports), whose name must start with a letter (DNS-1035)")
    # the ports a VM exposes: its own, then its containers', the first of each port/protocol wins (render._vm_ports)
    named: dict[str, str] = {}
    seen: set[tuple[int, str]] = set()
    for where, p in [(f"{path}.ports[{j}]", p) for j, p in enumerate(w["ports"]) if p] + _numbered(inner):
        if (p["port"], p["protocol"]) in seen:
            continue
        seen.add((p["port"], p["protocol"]))
        name = p.get("name") or f"{p['protocol'].lower()}-{p['port']}"
        if name in named:
            errors.add(doc.line(where), f"{where}.name", f"the port name is already used by {named[name]}")
        named.setdefault(name, where)


def _numbered(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """(container path, port) pairs -> (container path, port index within it) for messages."""
    out: list[tuple[str, Any]] = []
    count: dict[str, int] = {}
    for where, p in pairs:
        j = count.get(where, 0)
        count[where] = j + 1
        out.append((f"{where}.ports[{j}]", p))
    return out


def _user_data_problem(text: str) -> str | None:
    """vm.userData is merged into our cloud-config before `cloud-init schema` sees it: it must be a #cloud-config
    YAML mapping, parsed here with the input limits (size, depth, aliases) so it cannot hang or exhaust anything."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_USER_DATA:
        return f"user data is larger than {MAX_USER_DATA // 2**10} KiB"
    if not text.startswith("#cloud-config"):
        return "user data must be a cloud-config document starting with `#cloud-config`"
    try:
        node = compose_yaml(text, "userData", max_depth=32, alias_floor=10_000)
        value = yaml.constructor.SafeConstructor().construct_document(node) if node is not None else None
    except SpecError as err:
        return "user data: " + err.problems[0].message + (f" (its line {err.problems[0].line})"
                                                           if err.problems[0].line else "")
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, ArithmeticError, RecursionError):
        return "user data: a value cannot be read as YAML (e.g. an invalid date or !!int)"
    if value is not None and not isinstance(value, dict):
        return "user data must be a YAML mapping (#cloud-config keys)"
    return None


def _check_allow_from(workloads: list[tuple[int, dict[str, Any]]], stack_name: str | None, doc: Document,
                      errors: Errors) -> None:
    """allowFrom names tenants of this stack: another stack's namespaces are not ours to open ports to."""
    tenants: set[str] = {t for _, w in workloads if isinstance(t := w.get("tenant") or stack_name, str)}
    for i, w in workloads:
        places = [(f"spec.workloads[{i}].allowFrom", w.get("allowFrom") or [])] + \
            [(f"spec.workloads[{i}].ports[{j}].allowFrom", (port.get("allowFrom") or []) if isinstance(port, dict)
              else []) for j, port in enumerate(w["ports"])]
        for path, names in places:
            for k, name in enumerate(names):
                if name not in tenants:
                    errors.add(doc.line(f"{path}[{k}]") or doc.line(path), f"{path}[{k}]",
                               "not a tenant of this stack (a workload's tenant, or the stack's name where a "
                               "workload sets none)")


def _check_unique_names(items: list[Any], prefix: str, what: str, doc: Document, errors: Errors) -> None:
    """Names must be unique in a list; entries whose name failed its own check are passed over."""
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        name = (item or {}).get("name")
        if not name:
            continue
        if name in first:
            errors.add(doc.line(f"{prefix}[{i}].name"), f"{prefix}[{i}].name",
                       f"duplicate {what} (first at {prefix}[{first[name]}])")
        first.setdefault(name, i)


def _check_pools(pools: list[Any], prefix: str, doc: Document, errors: Errors) -> None:
    """Host pools: unique names, and an idle power no higher than the peak (capacity's figures need both)."""
    _check_unique_names(pools, prefix, "host pool", doc, errors)
    for i, pool in enumerate(pools):
        idle, peak = (pool or {}).get("idleWatts"), (pool or {}).get("peakWatts")
        if idle is not None and peak is not None and idle > peak:
            errors.add(doc.line(f"{prefix}[{i}].idleWatts"), f"{prefix}[{i}].idleWatts",
                       "must not be above peakWatts (an idle host draws less power than a busy one)")


_ITEM = re.compile(r"(spec\.workloads|spec\.hosts)\[(\d+)\]")


def _failed_items(problems: list[Problem]) -> set[tuple[str, int]]:
    """(list path, index) of every workload and host pool some problem is about."""
    out = set()
    for p in problems:
        m = _ITEM.match(p.path)
        if m:
            out.add((m.group(1), int(m.group(2))))
    return out


def _workload_lines(lines: dict[str, int]) -> dict[int, dict[str, int]]:
    """Workload index -> {field path inside it: line}, in one pass over every line (a scan per workload was what
    made 10,000 workloads take minutes)."""
    prefix = "spec.workloads["
    out: dict[int, dict[str, int]] = {}
    for key, line in lines.items():
        if not key.startswith(prefix):
            continue
        close = key.find("]", len(prefix))
        if close < 0 or not key[len(prefix):close].isdigit():
            continue
        sub = key[close + 2:] if len(key) > close + 1 and key[close + 1] == "." else ("" if len(key) == close + 1
                                                                                      else None)
        if sub is not None:
            out.setdefault(int(key[len(prefix):close]), {})[sub] = line
    return out


def load_stack(path: str, text: str | None = None) -> Stack:
    """Load and check a stack file; raises SpecError naming file, line and field of every problem."""
    errors = Errors(path)
    doc = check_document(path, STACK, text, errors, raise_errors=False)
    spec = doc.values.get("spec") or {}
    meta = doc.values.get("metadata") or {}
    # cross-field checks run on the parts that typed correctly, so one pass reports both kinds of problem;
    # the failed items are collected in one pass over the problems (a scan per item was quadratic)
    failed = _failed_items(errors.problems)
    workloads = [(i, w) for i, w in enumerate(spec.get("workloads") or [])
                 if w and ("spec.workloads", i) not in failed]
    # only explicit hostPorts can collide: the local target picks a free host port for a port without one
    # (runtime.assign_host_ports), and a cluster gives every workload its own Service
    host_ports: dict[tuple[int, str], str] = {}   # (hostPort, protocol) -> path of the port that has it
    _check_unique_names(spec.get("workloads") or [], "spec.workloads", "workload name", doc, errors)
    for i, w in workloads:
        p = f"spec.workloads[{i}]"
        _check_workload(w, p, doc, errors)
        for j, port in enumerate(w["ports"]):
            explicit = port and port.get("hostPort")
            owner = host_ports.setdefault((explicit, port["protocol"]), p) if explicit else None
            if owner not in (None, p):
                errors.add(doc.line(f"{p}.ports[{j}].hostPort"), f"{p}.ports[{j}].hostPort",
                           f"the hostPort is already published by {owner} (set another hostPort, or none: the local "
                           "target then picks a free one)")
    _check_allow_from(workloads, meta.get("name"), doc, errors)
    pools = [h for i, h in enumerate(spec.get("hosts") or []) if h and ("spec.hosts", i) not in failed]
    _check_pools(spec.get("hosts") or [], "spec.hosts", doc, errors)
    errors.raise_if_any()

    lines = _workload_lines(doc.lines)
    return Stack(
        name=meta["name"], file=path, policy=spec["policy"],
        labels={**meta["labels"], **lifecycle_labels(meta.get("owner"), meta.get("ttl"))},
        owner=meta.get("owner"), ttl=meta.get("ttl"),
        hosts=tuple(HostPool(**h) for h in pools) or DEFAULT_HOSTS,
        workloads=tuple(_workload(w, meta["name"], lines.get(i, {}), meta, i) for i, w in workloads),
        policy_line=doc.line("spec.policy"))


def load_hosts(path: str) -> tuple[HostPool, ...]:
    """A `kind: Hosts` file (the cluster or machines a stack is planned for), replacing a stack's spec.hosts."""
    doc = check_document(path, HOSTS_FILE)
    errors = Errors(path)
    _check_pools(doc.values["spec"]["pools"], "spec.pools", doc, errors)
    errors.raise_if_any()
    return tuple(HostPool(**p) for p in doc.values["spec"]["pools"])


def _index(stack: Stack, workload: Workload) -> int:
    return workload.index if workload.index >= 0 else stack.workloads.index(workload)


def problem(stack: Stack, workload: Workload, fld: str, message: str) -> Problem:
    """A Problem located at a workload's field, for checks made after loading (policy contradictions)."""
    path = f"spec.workloads[{_index(stack, workload)}]" + (f".{fld}" if fld else "")
    return Problem(stack.file, workload.line(fld), path, message)


def placement_problems(stack: Stack, runtimes: Mapping[str, Runtime]) -> list[Problem]:
    """Checks that depend on where policy put each workload (name -> runtime), made before anything renders:
    a VM or nested workload with replicas renders one VM per replica, named NAME-0..NAME-(N-1) (render._vm_context),
    and those names must be labels that no other workload has; a Windows VM needs a boot disk of its own."""
    problems: list[Problem] = []
    replicated: dict[str, Workload] = {}
    for w in stack.workloads:
        if runtimes.get(w.name) not in VM_RUNTIMES:
            continue
        if w.replicas > 1:
            replicated[w.name] = w
            last = replica_name(w.name, w.replicas - 1)
            if len(last) > 63:
                problems.append(problem(stack, w, "replicas", f"its VMs are named after it with -0..-{w.replicas - 1}"
                                                              " appended, longer than 63 characters: shorten the name"))
        if w.os == "windows" and not (w.vm.disk_image or w.vm.disk_pvc or (w.runtime is Runtime.VM and w.image)):
            problems.append(problem(stack, w, "vm.disk", "a windows VM needs vm.disk.image or vm.disk.pvc (its boot"
                                                         " disk); there is no default Windows image"))
    # NAME-i can only equal a workload name that ends in -<digits>: one lookup per workload, not per replica
    for w in stack.workloads:
        base, _, number = w.name.rpartition("-")
        owner = replicated.get(base)
        if owner is not None and number.isdigit() and int(number) < owner.replicas \
                and replica_name(base, int(number)) == w.name:
            problems.append(problem(stack, w, "name", f"also the name of a VM of spec.workloads[{_index(stack, owner)}]"
                                                      f" (its {owner.replicas} replicas' VMs are named after it with "
                                                      f"-0..-{owner.replicas - 1} appended)"))
    return problems


def namespace_prefix_problem(stack: Stack, prefix: str) -> Problem | None:
    """--namespace-prefix + tenant names a namespace, so it must keep every tenant a DNS label of at most 63."""
    if not prefix:
        return None
    longest = max((w.tenant for w in stack.workloads), key=len, default=stack.name)
    if not re.fullmatch(r"[a-z0-9][-a-z0-9]*", prefix):
        why = "must be lowercase letters, digits and '-', starting with a letter or digit"
    elif len(prefix) + len(longest) > 63:
        why = f"with the longest tenant ({len(longest)} characters) it makes a namespace name longer than 63 characters"
    else:
        return None
    return Problem("--namespace-prefix", 0, "", f"{show(prefix)} {why}")


def stack_json_schema() -> dict[str, Any]:
    """The JSON Schema of the stack file, generated from the declarations above (shipped in data/)."""
    schema = STACK.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://hybridorch.dev/schemas/stack-v1alpha1.json"
    schema["title"] = "hybridorch Stack"
    return schema


__all__ = ["Stack", "Workload", "HostPool", "Port", "Resources", "Volume", "InnerContainer", "VmSettings",
           "Readiness", "Snapshots", "load_stack", "problem", "stack_json_schema", "SpecError", "RUNTIMES", "API_VERSION"]
