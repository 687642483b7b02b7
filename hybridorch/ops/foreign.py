"""The shapes of the foreign objects `audit` reads (Kubernetes/KubeVirt manifests, cloud-config, libvirt domains):
typed readers that take only the declared fields, check their types and report a wrong one in one line.

A shape reads YAML nodes (from safeload.compose_documents) straight into plain data holding only what the audit
rules look at, so a huge manifest is never constructed in full and no rule meets a type it does not expect.
Error messages name the file, line and field path and say what was expected; they never quote the input.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from hybridorch.core.safexml import XmlNode
from hybridorch.core.schema import parse_quantity
from hybridorch.core.spec import API_VERSION
from hybridorch.errors import Problem, SpecError

_T = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, TIMESTAMP, MERGE = (_T + t for t in ("str", "int", "float", "bool", "null", "timestamp",
                                                                  "merge"))
MAX_PROBLEMS = 50   # per file: a generated file with 100,000 bad objects would otherwise print 100,000 lines


class Problems:
    """The problems found in one file, each at its line (the rest of the file is still read, so all are shown)."""

    def __init__(self, file: str):
        self.file = file
        self.items: list[Problem] = []
        self.count = 0

    def add(self, node: yaml.Node | None, path: str, message: str, line: int = 0) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(Problem(self.file, node.start_mark.line + 1 if node is not None else line, path,
                                      message))

    def raise_any(self) -> None:
        if self.count:
            extra = self.count - len(self.items)
            tail = [Problem(self.file, 0, "", f"{extra} more problem(s) not shown")] if extra else []
            raise SpecError(self.items + tail)


def found(node: yaml.Node) -> str:
    """What a node is, in words (never its content)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {STR: "text", INT: "a number", FLOAT: "a number", BOOL: "true/false", NULL: "nothing",
            TIMESTAMP: "a date"}.get(node.tag, "a tagged value")


# --- shapes --------------------------------------------------------------------------------------------

class Shape:
    """Reads one node into plain data, or reports why it cannot and returns None (the field counts as absent)."""

    what = "a value"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def wrong(self, node: yaml.Node, path: str, problems: Problems) -> None:
        problems.add(node, path, f"expected {self.what}, found {found(node)}")


def _null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL


class Text(Shape):
    """Text; Kubernetes refuses a number or true/false where a string belongs, and so does this."""

    what = "text"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == STR:
            return node.value
        if not _null(node):
            self.wrong(node, path, problems)
        return None


class Scalar(Shape):
    """Any scalar as its text (cloud-config lists mix words and numbers)."""

    what = "a single value"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return None if node.tag == NULL else node.value
        self.wrong(node, path, problems)
        return None


class Time(Shape):
    """A timestamp, quoted (text) or not (YAML's own timestamp): its text, which durations.parse_time reads."""

    what = "a timestamp"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag in (STR, TIMESTAMP):
            return node.value
        if not _null(node):
            self.wrong(node, path, problems)
        return None


class Flag(Shape):
    what = "true or false"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == BOOL:
            return node.value.lower() in ("true", "yes", "on", "y")
        if not _null(node):
            self.wrong(node, path, problems)
        return None


_DECIMAL = re.compile(r"[-+]?[0-9]+")


@dataclass(frozen=True)
class Whole(Shape):
    """A whole number within [low, high]; written in decimal, or 0x/0o/0b as YAML allows."""

    low: int = 0
    high: int = 2**31 - 1
    what: str = "a whole number"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != INT:
            if not _null(node):
                self.wrong(node, path, problems)
            return None
        text = node.value.replace("_", "")
        value: int | None = None
        if len(text) <= 24:   # int() of thousands of digits is slow, and Python refuses more than 4,300
            try:
                value = int(text, 10 if _DECIMAL.fullmatch(text) else 0)
            except ValueError:
                value = None
        if value is None or not self.low <= value <= self.high:
            problems.add(node, path, f"expected {self.what} from {self.low} to {self.high}")
            return None
        return value


PORT = Whole(0, 65535, "a port number")


@dataclass(frozen=True)
class PortOrName(Shape):
    """A port by number or by name (a Service's targetPort)."""

    what: str = "a port number or name"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == STR:
            return node.value
        return PORT.read(node, path, problems)


class Quantity(Shape):
    """A Kubernetes quantity (500m, 2, 1.5Gi), as text that schema.parse_quantity is known to read."""

    what = "a quantity such as 500m or 2Gi"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag in (STR, INT, FLOAT):
            if parse_quantity(node.value) is not None:
                return node.value
            problems.add(node, path, f"expected {self.what}")
            return None
        if not _null(node):
            self.wrong(node, path, problems)
        return None


QUANTITY = Quantity()

# Kubernetes' own resource names: a problem under limits/requests is shown at such a key (cpu, memory...); a key of
# anybody else's (an extended resource) is never quoted, its entry is counted instead
RESOURCE_NAME = re.compile(r"cpu|memory|ephemeral-storage|storage|hugepages-[0-9]{1,6}[KMGT]i?", re.ASCII)


class Resources(Shape):
    """resources.limits or .requests: a mapping whose every value is a quantity, each problem at its own key."""

    what = "a mapping"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if not isinstance(node, yaml.MappingNode):
            if not _null(node):
                self.wrong(node, path, problems)
            return None
        out = {}
        for i, (k, v) in enumerate(pairs(node)):
            if not (isinstance(k, yaml.ScalarNode) and k.tag == STR):
                problems.add(k, f"{path} (entry {i + 1})", f"a key must be text, found {found(k)}")
                continue
            at = f"{path}.{k.value}" if RESOURCE_NAME.fullmatch(k.value) else f"{path} (entry {i + 1})"
            out[k.value] = QUANTITY.read(v, at, problems)
        return out


class Keys(Shape):
    """Only whether something is there: a mapping as {key: True}, a list as [True...], a scalar as its text. Enough
    for rules such as "podSelector is empty" or "qemuGuestAgent is among the propagation methods"."""

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.MappingNode):
            return {k.value: True for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        if isinstance(node, yaml.SequenceNode):
            return [True] * len(node.value)
        return None if _null(node) else node.value


@dataclass(frozen=True)
class ListOf(Shape):
    item: Shape
    what: str = "a list"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if isinstance(node, yaml.SequenceNode):
            read = self.item.read
            return [read(n, f"{path}[{i}]", problems) for i, n in enumerate(node.value)]
        if not _null(node):
            self.wrong(node, path, problems)
        return None


def pairs(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """A mapping's pairs with YAML merge keys (<<) resolved, merged pairs first so the mapping's own win; without
    recursion (a chain of merges may be as long as the file has anchors)."""
    if not any(k.tag == MERGE for k, _ in node.value):
        return node.value
    out: list[tuple[yaml.Node, yaml.Node]] = []
    todo: list[Any] = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, tuple):
            out.append(item)
            continue
        if isinstance(item, yaml.SequenceNode):
            todo.extend(m for m in item.value if isinstance(m, yaml.MappingNode))
            continue
        own = [p for p in item.value if p[0].tag != MERGE]
        todo.extend(reversed(own))      # popped last: the mapping's own pairs come after the merged ones
        todo.extend(v for k, v in item.value if k.tag == MERGE)
    return out


@dataclass(frozen=True)
class MapOf(Shape):
    """A mapping with text keys (labels): its values in one shape. Errors name the mapping, never a key."""

    value: Shape
    what: str = "a mapping"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if not isinstance(node, yaml.MappingNode):
            if not _null(node):
                self.wrong(node, path, problems)
            return None
        out = {}
        for k, v in pairs(node):
            if not (isinstance(k, yaml.ScalarNode) and k.tag == STR):
                problems.add(k, path, f"a key must be text, found {found(k)}")
                continue
            out[k.value] = self.value.read(v, path, problems)
        return out


@dataclass(frozen=True)
class Obj(Shape):
    """A mapping of which only the declared fields are read; the rest is left unread (and unchecked)."""

    fields: dict[str, Shape] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    what: str = "a mapping"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        if not isinstance(node, yaml.MappingNode):
            if not _null(node):
                self.wrong(node, path, problems)
            return None
        out: dict[str, Any] = {}
        fields = self.fields
        for k, v in pairs(node):
            shape = fields.get(k.value) if isinstance(k, yaml.ScalarNode) else None
            if shape is not None:
                out[k.value] = shape.read(v, f"{path}.{k.value}" if path else k.value, problems)
        for name in self.required:
            if out.get(name) is None:   # absent or null (a wrong type was reported where it was read)
                given = next((v for k, v in pairs(node) if isinstance(k, yaml.ScalarNode) and k.value == name), None)
                if given is None or _null(given):
                    problems.add(node, f"{path}.{name}" if path else name, "is missing")
        return out


@dataclass(frozen=True)
class Either(Shape):
    """A list in one shape, or a single value in another (cloud-config packages: `name` or `[name, version]`)."""

    single: Shape
    many: Shape
    what: str = "a value or a list"

    def read(self, node: yaml.Node, path: str, problems: Problems) -> Any:
        return (self.many if isinstance(node, yaml.SequenceNode) else self.single).read(node, path, problems)


# --- Kubernetes and KubeVirt objects: the fields the audit rules read --------------------------------------

TEXT, TIME, FLAG, SCALAR, KEYS = Text(), Time(), Flag(), Scalar(), Keys()
COUNT = Whole(0, 2**32 - 1, "a whole number of CPUs")
META = Obj({"name": TEXT, "namespace": TEXT, "labels": MapOf(TEXT), "creationTimestamp": TIME})
RESOURCES = Obj({"limits": Resources(), "requests": Resources()})
CONTAINER = Obj({
    "name": TEXT,
    "resources": RESOURCES,
    "securityContext": Obj({"privileged": FLAG, "capabilities": Obj({"add": ListOf(TEXT)})}),
    "ports": ListOf(Obj({"containerPort": PORT, "hostPort": PORT})),
})
CONTAINER_GROUPS = ("initContainers", "containers", "ephemeralContainers")   # every list of a pod that runs code
POD_SPEC = Obj({
    "runtimeClassName": TEXT, "hostNetwork": FLAG, "hostPID": FLAG, "hostIPC": FLAG,
    "volumes": ListOf(Obj({"name": TEXT, "hostPath": Obj({"path": TEXT})})),
    **{group: ListOf(CONTAINER) for group in CONTAINER_GROUPS},
})
TEMPLATE = Obj({"metadata": META, "spec": POD_SPEC}, required=("spec",), what="a pod template (a mapping)")
CONTROLLER = Obj({"template": TEMPLATE}, required=("template",))
VM_DOMAIN = Obj({
    "cpu": Obj({"cores": COUNT, "sockets": COUNT, "threads": COUNT}),
    "resources": RESOURCES,
    "memory": Obj({"guest": QUANTITY}),
    "devices": Obj({"filesystems": ListOf(Obj({"name": TEXT})), "hostDevices": ListOf(Obj({"deviceName": TEXT})),
                    "gpus": ListOf(Obj({"deviceName": TEXT}))}),
})
_PROPAGATION = Obj({"propagationMethod": KEYS})
VMI_SPEC = Obj({   # what a VirtualMachineInstance runs; every KubeVirt kind that makes VMs holds one
    "domain": VM_DOMAIN,
    "volumes": ListOf(Obj({"hostDisk": Obj({"path": TEXT})})),
    "accessCredentials": ListOf(Obj({"sshPublicKey": _PROPAGATION, "userPassword": _PROPAGATION})),
})
# where each KubeVirt kind keeps the VirtualMachineInstance spec it runs: the audit's VM rules read it there
VMI_SPEC_AT = {
    "VirtualMachineInstance": "spec",
    "VirtualMachine": "spec.template.spec",
    "VirtualMachineInstanceReplicaSet": "spec.template.spec",
    "VirtualMachinePool": "spec.virtualMachineTemplate.spec.template.spec",
}


def _holding(path: str, inner: Shape) -> Shape:
    """The shape of an object's `spec` that holds `inner` at `path`: each template's spec sits beside its
    metadata (read for its labels), every other step is a mapping of that one field."""
    shape = inner
    for name in reversed(path.split(".")[1:]):
        shape = Obj({"metadata": META, "spec": shape}) if name == "spec" else Obj({name: shape})
    return shape


SPEC_OF_KIND: dict[str, Shape] = {
    "Pod": POD_SPEC,
    **{k: CONTROLLER for k in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")},
    "CronJob": Obj({"jobTemplate": Obj({"spec": CONTROLLER}, required=("spec",))}, required=("jobTemplate",)),
    "Service": Obj({"type": TEXT, "externalIPs": ListOf(TEXT),
                    "ports": ListOf(Obj({"port": PORT, "targetPort": PortOrName()}))}),
    "NetworkPolicy": Obj({"podSelector": KEYS, "policyTypes": ListOf(TEXT), "ingress": KEYS}),
    **{kind: _holding(at, VMI_SPEC) for kind, at in VMI_SPEC_AT.items()},
    "VirtualMachineSnapshot": Obj({"source": Obj({"name": TEXT})}),
}
HEAD = Obj({"apiVersion": TEXT, "kind": TEXT, "metadata": META})
NOT_AN_OBJECT = ("not a Kubernetes object (no kind); audit takes stack files, Kubernetes manifests, libvirt domain "
                 "XML and #cloud-config")


@dataclass(frozen=True)
class Foreign:
    """One object read from a manifest: the declared fields as plain data, and its node (lines on demand)."""

    doc: dict[str, Any]
    node: yaml.MappingNode

    def line(self, path: str) -> int:
        return node_line(self.node, path)


def _scalar_field(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in pairs(node):
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def is_stack(node: yaml.Node) -> bool:
    """A hybridorch stack is a document of hybridorch's apiVersion and kind Stack; a `kind: Stack` of any other
    apiVersion is somebody else's object."""
    api, kind = _scalar_field(node, "apiVersion"), _scalar_field(node, "kind")
    return (isinstance(api, yaml.ScalarNode) and api.value == API_VERSION and isinstance(kind, yaml.ScalarNode)
            and kind.value == "Stack")


def _is_list(kind: Any, node: yaml.Node) -> bool:
    # what `kubectl get -o yaml` writes: kind List (or a typed FooList) holding the objects in items
    return isinstance(kind, str) and (kind == "List" or kind.endswith("List")) and \
        _scalar_field(node, "items") is not None


POD_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")


def _sub(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name


def read_object(node: yaml.Node, path: str, problems: Problems, out: list[Foreign]) -> None:
    """One document (or List item) into Foreign objects; a List's items are read in turn, without recursion."""
    todo = [(node, path)]
    while todo:
        item, at = todo.pop()
        head = HEAD.read(item, at, problems) if isinstance(item, yaml.MappingNode) else None
        if head is None or "kind" not in head:
            problems.add(item, at, NOT_AN_OBJECT)
            continue
        kind = head["kind"]
        if kind is None:     # a kind of the wrong type was reported where it was read; a null one is no kind
            if _null(_scalar_field(item, "kind")):   # type: ignore[arg-type]
                problems.add(item, at, NOT_AN_OBJECT)
            continue
        if _is_list(kind, item):
            items = _scalar_field(item, "items")
            if isinstance(items, yaml.SequenceNode):
                todo.extend(reversed([(n, f"{_sub(at, 'items')}[{i}]") for i, n in enumerate(items.value)]))
            elif not _null(items):   # type: ignore[arg-type]
                ListOf(HEAD).wrong(items, _sub(at, "items"), problems)   # type: ignore[arg-type]
            continue
        spec = _scalar_field(item, "spec")
        if kind in SPEC_OF_KIND and spec is not None:
            head["spec"] = SPEC_OF_KIND[kind].read(spec, _sub(at, "spec"), problems)
        if kind in POD_KINDS and (spec is None or _null(spec)):
            problems.add(item, _sub(at, "spec"), f"is missing (a {kind} needs one)")
        out.append(Foreign(head, item))   # type: ignore[arg-type]


def read_manifests(nodes: list[yaml.Node], file: str) -> list[Foreign]:
    """Every object of a manifest stream (List items expanded); all type problems at once as one SpecError."""
    problems = Problems(file)
    out: list[Foreign] = []
    for node in nodes:
        if is_stack(node):
            problems.add(node, "", "a hybridorch Stack must be the only document of its file")
            continue
        read_object(node, "", problems, out)
    problems.raise_any()
    return out


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def node_line(node: yaml.Node, path: str) -> int:
    """The line of the deepest written prefix of a field path (a.b[0].c) inside a node."""
    line = node.start_mark.line + 1
    for name, index in _PART.findall(path):
        at: yaml.Node | None = None     # where the part is written: a mapping's key, a list's item
        child: yaml.Node | None = None
        if name and isinstance(node, yaml.MappingNode):
            at, child = next(((k, v) for k, v in pairs(node) if isinstance(k, yaml.ScalarNode) and k.value == name),
                             (None, None))
        elif index and isinstance(node, yaml.SequenceNode) and len(index) < 9 and int(index) < len(node.value):
            at = child = node.value[int(index)]
        if at is None or child is None:
            break
        node, line = child, at.start_mark.line + 1
    return line


# --- cloud-config -------------------------------------------------------------------------------------------

CLOUD_CONFIG = Obj({"mounts": ListOf(ListOf(SCALAR, what="a mount (a list)")),
                    "packages": ListOf(Either(SCALAR, ListOf(SCALAR)))}, what="a cloud-config mapping")


def read_cloud_config(nodes: list[yaml.Node], file: str) -> tuple[dict[str, Any], yaml.Node | None]:
    """The fields of #cloud-config user data the rules read, and its node (for lines)."""
    if not nodes:
        return {}, None
    problems = Problems(file)
    if len(nodes) > 1:
        problems.add(nodes[1], "", "cloud-config user data is one YAML document, found several")
    data = CLOUD_CONFIG.read(nodes[0], "", problems)
    problems.raise_any()
    return data or {}, nodes[0]


# --- libvirt domain XML -------------------------------------------------------------------------------------

_COUNT_TEXT = re.compile(r"[0-9]{1,9}", re.ASCII)
_PORT_TEXT = re.compile(r"[0-9]{1,5}", re.ASCII)


@dataclass(frozen=True)
class Device:
    """One device element the rules look at: its type attribute, what it names (a path, a channel target, an
    address) and its line."""

    type: str
    name: str
    line: int
    extra: str = ""


@dataclass(frozen=True)
class Domain:
    """The parts of a libvirt domain the audit rules read, typed."""

    name: str
    line: int
    vcpus: tuple[tuple[int, int], ...]          # (count, line) of each <vcpu>
    has_vcpu: bool
    has_memory: bool
    filesystems: tuple[Device, ...]             # type = driver, name = host path
    channels: tuple[Device, ...]                # type, name = target name
    hostdevs: tuple[Device, ...]
    graphics: tuple[Device, ...]                # type, name = first public listen address or "", extra = "network"
    qemu_args: tuple[Device, ...]               # name = the value of a <qemu:arg>
    forwards: tuple[tuple[str, int, int, int], ...]   # (address, host port, guest port, line) in QEMU arguments
    labels: dict[str, str] = field(default_factory=dict)


def _first(node: XmlNode, tag: str) -> dict[str, str]:
    found_ = node.find(tag)
    return found_[0].attrs if found_ else {}


def read_domain(root: XmlNode, file: str, hostfwd: re.Pattern[str], public: Callable[[str], bool]) -> Domain:
    """A parsed domain into its typed parts; a <vcpu> or forwarded port that is not a number is a one-line error
    (a 5,000-digit count is refused by its length, never handed to int())."""
    problems = Problems(file)
    if root.tag != "domain":
        problems.add(None, "", "not a libvirt domain (the root element is not <domain>)", root.line)
    vcpus = []
    for v in root.find("vcpu"):
        if _COUNT_TEXT.fullmatch(v.text.strip()):
            vcpus.append((int(v.text), v.line))
        else:
            problems.add(None, "vcpu", "expected a whole number of CPUs (at most 9 digits)", v.line)
    filesystems = tuple(Device(_first(fs, "driver").get("type", "path (9p)"), _source_path(fs), fs.line)
                        for fs in root.find("devices", "filesystem"))
    channels = tuple(Device(ch.attrs.get("type", ""), _first(ch, "target").get("name", ""), ch.line)
                     for ch in root.find("devices", "channel"))
    hostdevs = tuple(Device(d.attrs.get("type", "device"), "", d.line) for d in root.find("devices", "hostdev"))
    graphics = []
    for g in root.find("devices", "graphics"):
        addrs = [g.attrs.get("listen")] + [x.attrs.get("address") for x in g.find("listen")]
        shown = next((a for a in addrs if a and public(a)), "")
        network = "network" if any(x.attrs.get("type") == "network" for x in g.find("listen")) else ""
        graphics.append(Device(g.attrs.get("type", ""), shown, g.line, network))
    args = tuple(Device("", n.attrs["value"], n.line) for n in root.iter() if n.tag.endswith(":arg")
                 and "value" in n.attrs)
    forwards = []
    for arg in args:
        for addr, host, guest in hostfwd.findall(arg.name):
            if _PORT_TEXT.fullmatch(host) and _PORT_TEXT.fullmatch(guest):
                forwards.append((addr, int(host), int(guest), arg.line))
            else:
                problems.add(None, "qemu:arg", "a hostfwd port is not a port number", arg.line)
    problems.raise_any()
    name_nodes = root.find("name")
    labels = {n.attrs.get("key", ""): n.attrs.get("value", "") for n in root.iter()
              if n.tag.endswith("label") and "key" in n.attrs}
    return Domain((name_nodes[0].text.strip() if name_nodes else "") or "?", root.line, tuple(vcpus),
                  bool(root.find("vcpu")), bool(root.find("memory")), filesystems, channels, hostdevs,
                  tuple(graphics), args, tuple(forwards), labels)


def _source_path(fs: XmlNode) -> str:
    source = _first(fs, "source")
    return source.get("dir") or source.get("file") or source.get("socket") or "?"
