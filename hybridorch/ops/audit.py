"""Audit rules: the risks virtualization brings, checked on the plan, on rendered output and on what runs.

Pure: rules are data; each check takes a plan, parsed documents or inspected runtime facts (plus `now`) and
returns Findings. Reading files, rendering and talking to runtimes happen in api.audit and audit_live.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from hybridorch.backends.base import record_count, record_time, record_ttl
from hybridorch.errors import AuditFailed, OutputError
from hybridorch.core.labels import LABEL_OWNER, LABEL_RUNTIME, LABEL_STACK, LABEL_TTL, LABEL_WORKLOAD, replica_dir
from hybridorch.core.plan import Plan
from hybridorch.core.policy import Profile
from hybridorch.core.runtime import CONTAINER_RUNTIMES, VM_RUNTIMES, Runtime, runtime_of
from hybridorch.core.durations import human_age, parse_duration, parse_time
from hybridorch.core.spec import Stack, Workload, cpu_millis
from hybridorch.core.safeload import compose_documents
from hybridorch.ops.files import write_whole
from hybridorch.core.schema import parse_quantity
from hybridorch.core.safexml import parse_xml
from hybridorch.ops import foreign
from hybridorch.core.text import table
from hybridorch.ops.sarif import artifact_location, original_uri_base_ids
from hybridorch.render.domain import HOSTFWD   # one reading of a domain's forwards (domain.forwards_in)

SEVERITIES = ("low", "medium", "high")
SARIF_LEVEL = {"low": "note", "medium": "warning", "high": "error"}
TOOL_URI = "https://hybridorch.dev/audit"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: str
    summary: str
    why: str
    fix: str


RULES: tuple[Rule, ...] = (
    Rule("HYB001", "no-resource-limits", "high", "A container or VM has no CPU or memory limit.",
         "Without a cap one guest or container can starve the host and every neighbour on it.",
         "Set resources.cpu and resources.memory (hybridorch sets limits = requests); in hand-written manifests "
         "set resources.limits.cpu and .memory."),
    Rule("HYB002", "vm-cpu-ceiling", "high", "A VM may use more CPUs than the policy's per-VM ceiling.",
         "A guest with more vCPUs than the ceiling can take a host's cores from every other tenant on it.",
         "Lower vm.cpus / resources.cpu, or raise maxVmCpus in a Policy file if the host really is dedicated."),
    Rule("HYB003", "host-file-sharing", "high", "Host files are shared with a container or guest.",
         "hostPath volumes, virtiofs/9p shared folders and bind mounts open a path around the isolation "
         "boundary straight into the host's file system.",
         "Use a PersistentVolumeClaim or a volume in the spec; copy data in with cloud-init instead of sharing "
         "a host folder."),
    Rule("HYB004", "guest-agent-channel", "medium", "A guest agent or clipboard channel links guest and host.",
         "The QEMU guest agent and SPICE clipboard channels let the host run commands in the guest and move data "
         "across the boundary; a compromised side reaches the other.",
         "Remove the org.qemu.guest_agent / spicevmc channel, KubeVirt accessCredentials with qemuGuestAgent, "
         "and qemu-guest-agent / spice-vdagent from cloud-init unless operations need them."),
    Rule("HYB005", "privileged", "high", "A container runs privileged.",
         "A privileged container has every capability and all host devices: escaping it is trivial.",
         "Drop `requires: privileged`, or let the policy place the workload in a VM (do not allow "
         "privilegedTrustedAsContainer)."),
    Rule("HYB006", "host-namespaces", "high", "A workload shares the host's network, PID or IPC namespace.",
         "Host namespaces let a workload see and reach the host's processes, sockets and other tenants' traffic.",
         "Remove hostNetwork/hostPID/hostIPC (and `requires: host-network`); publish ports instead."),
    Rule("HYB007", "added-capabilities", "medium", "A container adds Linux capabilities.",
         "Each added capability widens the kernel surface a container can attack on a shared kernel.",
         "Drop the added capabilities, or run the workload in a VM if it needs them."),
    Rule("HYB008", "device-passthrough", "high", "A host device is passed through to a workload.",
         "A passed-through device gives the guest direct DMA or driver access to host hardware, a well-known "
         "escape route.",
         "Remove hostdev/hostDevices/gpus and `requires: host-devices` unless the workload owns dedicated "
         "hardware with an IOMMU."),
    Rule("HYB009", "management-port-exposed", "high",
         "A management port (SSH, RDP, VNC/SPICE, libvirt, Docker, kubelet) is reachable from outside.",
         "A management API published next to ordinary services is one password away from every VM on the host.",
         "Keep management ports on ClusterIP / 127.0.0.1 (no NodePort, LoadBalancer, hostPort or `public: "
         "true`); reach consoles through `hybridorch logs` or a bastion."),
    Rule("HYB010", "runtime-socket-mounted", "high",
         "A container runtime or libvirt socket is mounted into a workload.",
         "Whoever reaches the Docker, containerd or libvirt socket controls every container and VM on the host.",
         "Do not mount /var/run/docker.sock, containerd.sock or libvirt-sock into workloads."),
    Rule("HYB011", "tenant-without-default-deny", "medium", "A tenant namespace has no default-deny NetworkPolicy.",
         "Without a default deny every pod in the cluster can reach the tenant's workloads and the other way round.",
         "Add a NetworkPolicy with podSelector: {} and policyTypes [Ingress, Egress] (hybridorch renders one per "
         "tenant)."),
    Rule("HYB012", "isolation-bypassed", "high",
         "A workload that needs a sandbox or VM runs as a plain container.",
         "Untrusted code on a shared kernel is one kernel bug away from the host; the policy asked for isolation.",
         "Keep runtimeClassName in user templates, register a sandbox runtime (kata/runsc) with the local Docker "
         "engine, and do not override the policy for untrusted workloads."),
    Rule("HYB013", "vm-without-owner-or-ttl", "low", "A VM has no owner or no TTL.",
         "VMs nobody owns and nobody expires are created, forgotten and never patched (VM sprawl).",
         "Set metadata.owner and metadata.ttl (or owner/ttl on the workload)."),
    Rule("HYB014", "past-ttl", "medium", "A workload runs longer than its TTL.",
         "Forgotten workloads keep old software running and keep consuming capacity.",
         "Remove it (`hybridorch down`) or raise its ttl if it is still needed."),
    Rule("HYB015", "snapshot-retention", "medium", "Snapshots are kept longer than the retention allows.",
         "A months-old snapshot brings back old vulnerabilities and credentials when it is restored.",
         "Set snapshots.maxAge at or below the policy's maxSnapshotAge and delete older snapshots."),
    Rule("HYB016", "stale-guest-image", "medium", "A guest or container image is older than the allowed age.",
         "An image built long ago carries every vulnerability fixed since (unpatched guests).",
         "Rebuild or re-fetch the image (`python3 -m hybridorch.vm.guest fetch ARCH`, docker build) regularly."),
)
RULE_BY_ID = {r.id: r for r in RULES}

MANAGEMENT_PORTS = {22: "SSH", 3389: "RDP", 16509: "libvirt", 16514: "libvirt TLS", 2375: "Docker API",
                    2376: "Docker API TLS", 10250: "kubelet"}
RUNTIME_SOCKETS = ("docker.sock", "containerd.sock", "crio.sock", "libvirt-sock", "libvirt-sock-ro",
                   "virtqemud-sock", "podman.sock")
RUNTIME_SOCKET_DIRS = ("/var/run/docker", "/run/docker", "/var/run/libvirt", "/run/libvirt", "/var/run/containerd",
                       "/run/containerd", "/var/run", "/run")
LOOPBACK = ("127.", "::1", "localhost")
POD_KINDS = {"Pod": "spec", "Deployment": "spec.template.spec", "StatefulSet": "spec.template.spec",
             "DaemonSet": "spec.template.spec", "ReplicaSet": "spec.template.spec", "Job": "spec.template.spec",
             "CronJob": "spec.jobTemplate.spec.template.spec"}


def management_port(port: int) -> str | None:
    if 5900 <= port <= 5999:
        return "VNC/SPICE console"
    return MANAGEMENT_PORTS.get(port)


def runtime_socket(path: str) -> bool:
    clean = "/" + path.strip("/")
    return clean.rsplit("/", 1)[-1] in RUNTIME_SOCKETS or clean in RUNTIME_SOCKET_DIRS


def public_address(addr: str | None) -> bool:
    return not (addr or "").startswith(LOOPBACK) if addr else True


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    message: str
    file: str
    line: int
    object: str
    workload: str = field(default="", compare=False)   # for de-duplication across plan and rendered output
    live: bool = field(default=False, compare=False)   # seen on what runs (kept apart from the static view)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "severity": self.severity, "message": self.message, "file": self.file,
                "line": self.line, "object": self.object, "live": self.live}


@dataclass(frozen=True)
class Where:
    """Where findings about one input go: a file and a line for a JSON-ish path (or a workload field)."""

    file: str
    line_of: Callable[[str, str], int]   # (workload name or "", path or field) -> line

    def at(self, workload: str = "", path: str = "") -> tuple[str, int]:
        return self.file, self.line_of(workload, path)


def stack_where(stack: Stack) -> Where:
    """Findings about a stack (its plan or its rendered output) point at the workload's line in the stack file."""
    by_name = {w.name: w for w in stack.workloads}

    def line_of(workload: str, fld: str) -> int:
        w = by_name.get(workload)
        if w is None:
            return 1
        return w.lines.get(fld) or w.line("")
    return Where(stack.file, line_of)


@dataclass(frozen=True)
class Context:
    """What the checks compare against: the profile's ceilings, the image age limit and the current time."""

    profile: Profile
    now: float
    max_image_age: int | None = None        # seconds
    workloads: Mapping[str, Workload] = field(default_factory=dict)   # the stack's, for per-workload settings
    live: bool = False                      # the facts come from what runs

    def finding(self, rule: str, message: str, where: tuple[str, int], obj: str, workload: str = "") -> Finding:
        return Finding(rule, RULE_BY_ID[rule].severity, message, where[0], where[1], obj, workload, self.live)


# --- the plan ------------------------------------------------------------------------------------------

def check_plan(plan: Plan, ctx: Context) -> list[Finding]:
    """What only the plan knows: placements, public ports and privileges of local containers (which are not
    rendered), owner/ttl and snapshot retention of VMs."""
    where = stack_where(plan.stack)
    out: list[Finding] = []
    limit = ctx.profile.max_vm_cpus
    max_snap = ctx.profile.max_snapshot_age
    for p in plan.placements:
        w = p.workload
        obj = f"workload {w.name}"

        def add(rule: str, message: str, fld: str = "") -> None:
            out.append(ctx.finding(rule, message, where.at(w.name, fld), obj, w.name))
        container = p.runtime in CONTAINER_RUNTIMES
        if w.trust == "untrusted" and p.runtime is Runtime.CONTAINER:
            add("HYB012", f"untrusted workload {w.name} is placed as a plain container", "runtime")
        if p.runtime in VM_RUNTIMES:
            cpus = max(w.vcpus, -(-w.resources.cpu_millis // 1000))
            if cpus > limit:
                add("HYB002", f"VM {w.name} gets {cpus} CPUs; policy {ctx.profile.name} allows at most {limit} per VM",
                    "vm.cpus" if w.vm.cpus else "resources.cpu")
            missing = [x for x, v in (("owner", w.owner), ("ttl", w.ttl)) if not v]
            if missing:
                add("HYB013", f"VM {w.name} has no {' and no '.join(missing)}")
            if w.snapshots is not None:
                if w.snapshots.max_age is None:
                    add("HYB015", f"VM {w.name} keeps snapshots with no maxAge (policy maximum {max_snap})",
                        "snapshots")
                elif parse_duration(w.snapshots.max_age) > parse_duration(max_snap):
                    add("HYB015", f"VM {w.name} keeps snapshots for {w.snapshots.max_age}; policy "
                                  f"{ctx.profile.name} allows at most {max_snap}", "snapshots.maxAge")
        if container and "privileged" in w.requires:
            add("HYB005", f"{w.name} runs as a privileged {p.runtime} on the shared kernel", "requires")
        if container and "host-network" in w.requires:
            add("HYB006", f"{w.name} shares the host's network namespace", "requires")
        if "host-devices" in w.requires:
            add("HYB008", f"{w.name} requires host devices passed through to its {p.runtime}", "requires")
        for i, port in enumerate(list(w.ports) + [x for c in w.containers for x in c.ports]):
            what = management_port(port.port)
            if what and port.public:
                add("HYB009", f"{what} port {port.port} of {w.name} is published on every host address "
                              f"(public: true)", "ports")
    return out


# --- Kubernetes and KubeVirt objects ---------------------------------------------------------------------

def _get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict((doc.get("metadata") or {}).get("labels") or {})


def check_ttl(labels: Mapping[str, str], created: float | None, ctx: Context, where: tuple[str, int], obj: str,
              workload: str = "") -> list[Finding]:
    ttl = labels.get(LABEL_TTL)
    seconds = record_ttl(ttl)   # a label anybody may have set: a ttl this version cannot read never expires
    if seconds is None or created is None:
        return []
    age = ctx.now - created
    if age <= seconds:
        return []
    return [ctx.finding("HYB014", f"{obj} has run {human_age(age)}, past its ttl {ttl}", where, obj, workload)]


def check_objects(docs: list[dict[str, Any]], ctx: Context, locate: Callable[[int, str], tuple[str, int]]
                  ) -> list[Finding]:
    """Rules over Kubernetes/KubeVirt objects (rendered, hand-written or read from a cluster).

    locate(index of the document, path inside it) -> (file, line)."""
    scan = scan_objects(docs, ctx, locate)
    return scan.findings + scan.uncovered(ctx)


@dataclass
class ObjectScan:
    """The findings of each object alone, and what the namespace rule needs from all of them: the Namespaces (the
    last of each name, with where it is) and the namespaces a default-deny NetworkPolicy covers. Scans of parts of
    a stream merge in stream order."""

    findings: list[Finding] = field(default_factory=list)
    namespaces: dict[str, tuple[tuple[str, int], str, str]] = field(default_factory=dict)  # where, object, workload
    deny: set[str] = field(default_factory=set)

    def merge(self, other: "ObjectScan") -> None:
        self.findings += other.findings
        self.namespaces.update(other.namespaces)
        self.deny |= other.deny

    def uncovered(self, ctx: Context) -> list[Finding]:
        return [ctx.finding("HYB011", f"namespace {ns} has no default-deny NetworkPolicy", where, obj, workload)
                for ns, (where, obj, workload) in self.namespaces.items() if ns not in self.deny]


def scan_objects(docs: list[dict[str, Any]], ctx: Context, locate: Callable[[int, str], tuple[str, int]]
                 ) -> ObjectScan:
    """check_objects without the namespace rule, which needs every object of the stream."""
    scan = ObjectScan()
    out, namespaces, deny = scan.findings, scan.namespaces, scan.deny
    for i, doc in enumerate(docs):
        kind = doc.get("kind")
        labels = _labels(doc)
        meta = doc.get("metadata") or {}
        # a stack's objects of no workload (namespace, policies, quota) are reported once per tenant namespace
        tenant = f"tenant {meta.get('namespace') or meta.get('name')}" if labels.get(LABEL_STACK) else ""
        workload = labels.get(LABEL_WORKLOAD) or tenant
        obj = _name(doc)

        def add(rule: str, message: str, path: str = "") -> None:
            out.append(ctx.finding(rule, message, locate(i, path), obj, workload))
        if kind == "Namespace":
            namespaces[(doc.get("metadata") or {}).get("name")] = (locate(i, ""), obj, labels.get(LABEL_WORKLOAD, ""))
        if kind == "NetworkPolicy" and _default_deny(doc):
            deny.add((doc.get("metadata") or {}).get("namespace") or "default")
        out += check_ttl(labels, parse_time((doc.get("metadata") or {}).get("creationTimestamp")), ctx,
                         locate(i, "metadata.creationTimestamp"), obj, workload)
        if kind in POD_KINDS:
            _check_pod(doc, POD_KINDS[kind], labels, add)
        elif kind == "Service":
            _check_service(doc, add)
        elif kind in foreign.VMI_SPEC_AT:
            _check_kubevirt(doc, foreign.VMI_SPEC_AT[kind], labels, ctx, add)
        elif kind == "VirtualMachineSnapshot":
            _check_snapshot(doc, ctx, add)
    return scan


def _default_deny(doc: dict[str, Any]) -> bool:
    spec = doc.get("spec") or {}
    return spec.get("podSelector") in ({}, None) and "Ingress" in (spec.get("policyTypes") or ["Ingress"]) \
        and not spec.get("ingress")


def _check_pod(doc: dict[str, Any], prefix: str, labels: dict[str, str], add: Callable[..., None]) -> None:
    spec = _get(doc, prefix) or {}
    template_labels = _get(doc, prefix.rsplit(".spec", 1)[0] + ".metadata.labels") if prefix != "spec" else labels
    runtime = runtime_of((template_labels or labels).get(LABEL_RUNTIME))   # a foreign label: any value
    if runtime is Runtime.SANDBOXED and not spec.get("runtimeClassName"):
        add("HYB012", "placed as sandboxed but the pod has no runtimeClassName: it runs as a plain container",
            prefix)
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            add("HYB006", f"{flag}: true shares the host's namespace", f"{prefix}.{flag}")
    for v_i, vol in enumerate(spec.get("volumes") or []):
        host = (vol or {}).get("hostPath")
        if isinstance(host, dict):
            path = str(host.get("path", ""))
            add("HYB003", f"hostPath volume {vol.get('name')} mounts host path {path}",
                f"{prefix}.volumes[{v_i}]")
            if runtime_socket(path):
                add("HYB010", f"hostPath volume {vol.get('name')} mounts the runtime socket {path}",
                    f"{prefix}.volumes[{v_i}]")
    for group in foreign.CONTAINER_GROUPS:
        for c_i, c in enumerate(spec.get(group) or []):
            c = c or {}
            at = f"{prefix}.{group}[{c_i}]"
            cname = c.get("name")
            limits = _get(c, "resources.limits") or {}
            missing = [x for x in ("cpu", "memory") if not limits.get(x)]
            if missing and group == "containers":
                add("HYB001", f"container {cname} has no {' and no '.join(missing)} limit", f"{at}.resources")
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                add("HYB005", f"container {cname} is privileged", f"{at}.securityContext")
            added = _get(sc, "capabilities.add") or []
            if added:
                add("HYB007", f"container {cname} adds capabilities {', '.join(map(str, added))}",
                    f"{at}.securityContext.capabilities")
            for p in c.get("ports") or []:
                what = management_port(int((p or {}).get("containerPort") or 0))
                if what and (p or {}).get("hostPort"):
                    add("HYB009", f"{what} port {p['containerPort']} of container {cname} is published on every "
                                  f"node as hostPort {p['hostPort']}", f"{at}.ports")


def _check_service(doc: dict[str, Any], add: Callable[..., None]) -> None:
    spec = doc.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    exposed = kind in ("NodePort", "LoadBalancer") or bool(spec.get("externalIPs"))
    if not exposed:
        return
    for p_i, p in enumerate(spec.get("ports") or []):
        p = p or {}
        for port in {p.get("port"), p.get("targetPort")}:
            what = management_port(port) if isinstance(port, int) else None
            if what:
                add("HYB009", f"{what} port {port} is published through a {kind} Service", f"spec.ports[{p_i}]")
                break


def _check_kubevirt(doc: dict[str, Any], prefix: str, labels: dict[str, str], ctx: Context,
                    add: Callable[..., None]) -> None:
    """The VM rules over the VirtualMachineInstance spec at `prefix` (a VM's template, a pool's, a VMI's own)."""
    spec = _get(doc, prefix) or {}
    domain = spec.get("domain") or {}
    name = (doc.get("metadata") or {}).get("name")
    cpu = domain.get("cpu") or {}
    vcpus = int(cpu.get("cores") or 1) * int(cpu.get("sockets") or 1) * int(cpu.get("threads") or 1)
    limits = _get(domain, "resources.limits") or {}
    limit_cpus = -(-cpu_millis(str(limits["cpu"])) // 1000) if _quantity(limits.get("cpu")) else 0
    cpus = max(vcpus, limit_cpus)
    if cpus > ctx.profile.max_vm_cpus:
        add("HYB002", f"VM {name} gets {cpus} CPUs; policy {ctx.profile.name} allows at most "
                      f"{ctx.profile.max_vm_cpus} per VM", f"{prefix}.domain.cpu")
    missing = [x for x, bounded in (("cpu", limits.get("cpu") or cpu.get("cores")),
                                    ("memory", limits.get("memory") or _get(domain, "memory.guest"))) if not bounded]
    if missing:
        add("HYB001", f"VM {name} has no {' and no '.join(missing)} limit", f"{prefix}.domain.resources")
    devices = domain.get("devices") or {}
    for fs in devices.get("filesystems") or []:
        add("HYB003", f"VM {name} shares filesystem {(fs or {}).get('name')} with virtiofs",
            f"{prefix}.domain.devices.filesystems")
    for vol in spec.get("volumes") or []:
        if isinstance((vol or {}).get("hostDisk"), dict):
            add("HYB003", f"VM {name} uses hostDisk {vol['hostDisk'].get('path')}", f"{prefix}.volumes")
    for kind in ("hostDevices", "gpus"):
        for dev in devices.get(kind) or []:
            add("HYB008", f"VM {name} gets host device {(dev or {}).get('deviceName')} ({kind})",
                f"{prefix}.domain.devices.{kind}")
    for cred in spec.get("accessCredentials") or []:
        for key in ("sshPublicKey", "userPassword"):
            if "qemuGuestAgent" in (_get(cred, f"{key}.propagationMethod") or {}):
                add("HYB004", f"VM {name} propagates {key} through the QEMU guest agent",
                    f"{prefix}.accessCredentials")
    owner_ttl = [x for x, key in (("owner", LABEL_OWNER), ("ttl", LABEL_TTL)) if not labels.get(key)]
    if owner_ttl:
        add("HYB013", f"VM {name} has no {' and no '.join(owner_ttl)} label", "metadata.labels")


def _quantity(value: Any) -> bool:
    # the quantity parser, not a loose pattern: "1.2.3" must not reach cpu_millis (which asserts)
    return value is not None and parse_quantity(str(value)) is not None


def _check_snapshot(doc: dict[str, Any], ctx: Context, add: Callable[..., None]) -> None:
    created = parse_time((doc.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        return
    source = _get(doc, "spec.source.name") or ""
    w = ctx.workloads.get(source)
    limit = (w.snapshots.max_age if w and w.snapshots and w.snapshots.max_age else None) \
        or ctx.profile.max_snapshot_age
    age = ctx.now - created
    if age > parse_duration(limit):
        add("HYB015", f"snapshot of {source or '?'} is {human_age(age)} old; retention allows {limit}",
            "metadata.creationTimestamp")


# --- libvirt domain XML ---------------------------------------------------------------------------------

def check_domain(text: str, ctx: Context, where: Callable[[int, str], tuple[str, int]],
                 file: str = "domain.xml") -> list[Finding]:
    """Rules over a libvirt domain, read through its typed shape (foreign.Domain); malformed or unsafe XML is a
    one-line SpecError naming `file`. where(line in the XML, workload) -> (file, line)."""
    d = foreign.read_domain(parse_xml(text, file), file, HOSTFWD, public_address)
    workload = d.labels.get(LABEL_WORKLOAD, "")
    name, obj = d.name, f"domain {d.name}"
    out: list[Finding] = []

    def add(rule: str, message: str, line: int) -> None:
        out.append(ctx.finding(rule, message, where(line, workload), obj, workload))
    for count, line in d.vcpus:
        if count > ctx.profile.max_vm_cpus:
            add("HYB002", f"domain {name} gets {count} vCPUs; policy {ctx.profile.name} allows at most "
                          f"{ctx.profile.max_vm_cpus} per VM", line)
    if not d.has_vcpu or not d.has_memory:
        add("HYB001", f"domain {name} sets no <vcpu> or no <memory>", d.line)
    for fs in d.filesystems:
        add("HYB003", f"domain {name} shares host folder {fs.name} with the guest ({fs.type})", fs.line)
        if runtime_socket(fs.name):
            add("HYB010", f"domain {name} shares the runtime socket path {fs.name}", fs.line)
    for ch in d.channels:
        if ch.type == "spicevmc" or ch.name.startswith(("org.qemu.guest_agent", "com.redhat.spice")):
            add("HYB004", f"domain {name} has a {ch.type} channel {ch.name}".rstrip(), ch.line)
    for dev in d.hostdevs:
        add("HYB008", f"domain {name} passes through a host {dev.type} device", dev.line)
    for g in d.graphics:
        if g.name or g.extra:
            add("HYB009", f"domain {name} serves its {g.type} console on {g.name or 'a network address'}", g.line)
    # raw QEMU arguments (<qemu:commandline>) bypass libvirt's own elements: user-mode forwards, 9p, VFIO
    for addr, host_port, guest_port, line in d.forwards:
        what = management_port(guest_port) or management_port(host_port)
        if what and public_address(addr or "0.0.0.0"):
            add("HYB009", f"domain {name} forwards {what} port {guest_port} from {addr or '0.0.0.0'}:{host_port}",
                line)
    for arg in d.qemu_args:
        value = arg.name
        if value.startswith(("local,", "fsdev,")) or value.split(",", 1)[0] in ("virtio-9p-pci", "vhost-user-fs-pci"):
            add("HYB003", f"domain {name} shares a host folder through QEMU arguments ({value.split(',')[0]})",
                arg.line)
        if value.split(",", 1)[0] == "vfio-pci":
            add("HYB008", f"domain {name} passes through a host device with vfio-pci", arg.line)
    missing = [x for x, key in (("owner", LABEL_OWNER), ("ttl", LABEL_TTL)) if not d.labels.get(key)]
    if missing:
        add("HYB013", f"domain {name} has no {' and no '.join(missing)} label", d.line)
    return out


# --- cloud-init user data -------------------------------------------------------------------------------

AGENT_PACKAGES = ("qemu-guest-agent", "spice-vdagent", "spice-webdavd")


def check_cloud_init(text: str, ctx: Context, where: Callable[[str], tuple[str, int]], obj: str,
                     workload: str = "", file: str = "user-data") -> list[Finding]:
    """Rules over #cloud-config user data: shared folders mounted, guest agents installed. Read through the safe
    reader and its declared shape (foreign.CLOUD_CONFIG); bad input is a one-line SpecError naming `file`."""
    data, _node = foreign.read_cloud_config(compose_documents(text, file), file)
    out: list[Finding] = []
    for entry in data.get("mounts") or []:
        if isinstance(entry, list) and len(entry) >= 3 and str(entry[2]) in ("9p", "virtiofs"):
            out.append(ctx.finding("HYB003", f"mounts host share {entry[0]} at {entry[1]} ({entry[2]})",
                                   where("mounts"), obj, workload))
    for pkg in data.get("packages") or []:
        name = pkg[0] if isinstance(pkg, list) and pkg else pkg
        if str(name) in AGENT_PACKAGES:
            out.append(ctx.finding("HYB004", f"installs {name}, a host-to-guest agent", where("packages"), obj,
                                   workload))
    return out


# --- images ---------------------------------------------------------------------------------------------

def check_image_age(image: str, built: float | None, ctx: Context, where: tuple[str, int], obj: str,
                    workload: str = "") -> list[Finding]:
    if ctx.max_image_age is None or built is None:
        return []
    age = ctx.now - built
    if age <= ctx.max_image_age:
        return []
    return [ctx.finding("HYB016", f"{image} was built {human_age(age)} ago (limit {human_age(ctx.max_image_age)})",
                        where, obj, workload)]


# --- what runs: docker containers and local VMs (facts gathered by audit_live) --------------------------

def check_container(attrs: Mapping[str, Any], image_created: float | None, ctx: Context,
                    where: tuple[str, int]) -> list[Finding]:
    """Rules over one `docker inspect` result."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    workload = labels.get(LABEL_WORKLOAD, "")
    obj = f"container {str(attrs.get('Name', '')).lstrip('/')}"
    host = attrs.get("HostConfig") or {}
    out: list[Finding] = []

    def add(rule: str, message: str) -> None:
        out.append(ctx.finding(rule, message, where, obj, workload))
    missing = [x for x, set_ in (("cpu", host.get("NanoCpus") or (host.get("CpuQuota") or 0) > 0),
                                 ("memory", host.get("Memory"))) if not set_]
    if missing:
        add("HYB001", f"{obj} runs with no {' and no '.join(missing)} limit")
    if host.get("Privileged"):
        add("HYB005", f"{obj} is privileged")
    for space, key in (("network", "NetworkMode"), ("PID", "PidMode"), ("IPC", "IpcMode")):
        if host.get(key) == "host":
            add("HYB006", f"{obj} shares the host's {space} namespace")
    if host.get("CapAdd"):
        add("HYB007", f"{obj} adds capabilities {', '.join(host['CapAdd'])}")
    if host.get("Devices"):
        add("HYB008", f"{obj} has host devices {', '.join(d.get('PathOnHost', '?') for d in host['Devices'])}")
    for m in attrs.get("Mounts") or []:
        if m.get("Type") == "bind":
            add("HYB003", f"{obj} bind-mounts host path {m.get('Source')}")
            if runtime_socket(str(m.get("Source", ""))):
                add("HYB010", f"{obj} mounts the runtime socket {m.get('Source')}")
    for port, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        number = int(str(port).split("/")[0])
        what = management_port(number)
        for b in bindings or []:
            what_host = management_port(int(b.get("HostPort") or 0))
            if (what or what_host) and public_address(b.get("HostIp")):
                add("HYB009", f"{what or what_host} port {number} of {obj} is published on "
                              f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}")
    sandboxed = runtime_of(labels.get(LABEL_RUNTIME)) is Runtime.SANDBOXED     # a label: any value
    if sandboxed and host.get("Runtime", "runc") in ("runc", "", None):
        add("HYB012", f"{obj} was placed as sandboxed but runs under runc on the shared kernel "
                      "(no kata/runsc runtime registered with Docker)")
    out += check_ttl(labels, parse_time((attrs.get("State") or {}).get("StartedAt")) or
                     parse_time(attrs.get("Created")), ctx, where, obj, workload)
    out += check_image_age(str((attrs.get("Config") or {}).get("Image", "")), image_created, ctx, where, obj,
                           workload)
    return out


def check_local_vm(state: Mapping[str, Any], w: Workload | None, ctx: Context, where: tuple[str, int]
                   ) -> list[Finding]:
    """Rules over one local QEMU VM's state record (cpus, forwards, start time); owner/ttl come from the spec."""
    # the record may hold anything (edited by hand, another version): a field that is not what it should be is
    # unknown and no rule fires on it (base.record_*), never an exception
    workload = str(state.get("workload", ""))
    replica = record_count(state.get("replica")) or 0
    obj = f"vm {state.get('stack')}/{replica_dir(workload, replica)}"
    out: list[Finding] = []
    cpus = record_count(state.get("cpus")) or 0
    if cpus > ctx.profile.max_vm_cpus:
        out.append(ctx.finding("HYB002", f"{obj} runs with {cpus} vCPUs; policy {ctx.profile.name} allows at most "
                                         f"{ctx.profile.max_vm_cpus}", where, obj, workload))
    forwards = state.get("forwards")
    for fwd in forwards if isinstance(forwards, list) else []:
        if not (isinstance(fwd, list) and len(fwd) == 3 and isinstance(fwd[0], str)):
            continue
        addr, host_port, guest_port = fwd[0], record_count(fwd[1], 65535), record_count(fwd[2], 65535)
        what = management_port(guest_port or 0) or management_port(host_port or 0)
        if what and public_address(addr):
            out.append(ctx.finding("HYB009", f"{what} port {guest_port} of {obj} is forwarded from "
                                             f"{addr}:{host_port}", where, obj, workload))
    labels = dict(w.labels) if w else {}
    out += check_ttl(labels, record_time(state.get("started")), ctx, where, obj, workload)
    return out


# --- parsing hand-written inputs with line numbers ------------------------------------------------------

def manifest_objects(text: str, file: str) -> list[foreign.Foreign]:
    """The objects of a hand-written manifest file through the safe reader and their declared shapes
    (foreign.SPEC_OF_KIND): `kind: List` expanded, a wrong type a one-line SpecError; lines come from each
    object's node when a finding needs one."""
    return foreign.read_manifests(compose_documents(text, file), file)


def line_for(lines: Mapping[str, int], path: str) -> int:
    """The line of the deepest written prefix of path."""
    while path:
        if path in lines:
            return lines[path]
        if path.endswith("]"):
            path = path[:path.rindex("[")]
        else:
            path = path.rsplit(".", 1)[0] if "." in path else ""
    return lines.get("", 1)


# --- the report -----------------------------------------------------------------------------------------

def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per rule and workload of a stack (its plan, both renderings and what runs often see the same
    thing; the first, the plan's, has the most precise line); findings of no workload are kept per line."""
    seen: set[tuple[str, str, int, str, str, bool]] = set()
    out = []
    for f in findings:
        key = (f.rule, f.file, 0, f.workload, "", f.live) if f.workload else \
            (f.rule, f.file, f.line, "", f.message, f.live)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return sorted(out, key=lambda f: (-SEVERITIES.index(f.severity), f.file, f.line, f.rule))


def at_or_above(findings: Iterable[Finding], threshold: str) -> list[Finding]:
    if threshold == "never":
        return []
    rank = SEVERITIES.index(threshold)
    return [f for f in findings if SEVERITIES.index(f.severity) >= rank]


def format_table(findings: list[Finding]) -> str:
    if not findings:
        return "no findings"
    rows = [("SEVERITY", "RULE", "WHERE", "OBJECT", "FINDING")]
    rows += [(f.severity, f.rule, f"{f.file}:{f.line}", f.object, f.message) for f in findings]
    lines = table(rows)   # names from the audited files are escaped: one finding, one line
    counts = ", ".join(f"{sum(f.severity == s for f in findings)} {s}" for s in reversed(SEVERITIES))
    return "\n".join(lines) + f"\n\n{len(findings)} finding(s): {counts}"


def format_json(findings: list[Finding]) -> str:
    summary = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    return json.dumps({"findings": [f.to_dict() for f in findings], "summary": summary}, indent=2)


def to_sarif(findings: list[Finding], version: str, base_dir: str = ".") -> dict[str, Any]:
    """SARIF 2.1.0: every rule's metadata, one result per finding located at its file and line; files are
    relative URI references under %SRCROOT%, which the run maps to `base_dir` (see ops/sarif.py)."""
    index = {r.id: i for i, r in enumerate(RULES)}
    rules = [{"id": r.id, "name": r.name, "shortDescription": {"text": r.summary},
              "fullDescription": {"text": r.why}, "help": {"text": r.fix},
              "defaultConfiguration": {"level": SARIF_LEVEL[r.severity]},
              "properties": {"severity": r.severity}} for r in RULES]
    results = [{"ruleId": f.rule, "ruleIndex": index[f.rule], "level": SARIF_LEVEL[f.severity],
                "message": {"text": f"{f.object}: {f.message}"},
                "locations": [{"physicalLocation": {"artifactLocation": artifact_location(f.file, base_dir),
                                                    "region": {"startLine": max(f.line, 1)}},
                               "logicalLocations": [{"name": f.object}]}]} for f in findings]
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "hybridorch", "version": version, "informationUri": TOOL_URI,
                                          "rules": rules}},
                      "originalUriBaseIds": original_uri_base_ids(base_dir),
                      "results": results}]}


@dataclass(frozen=True)
class AuditReport:
    """The findings of one audit run, rendered in the chosen format, and the verdict of --fail-on."""

    findings: tuple[Finding, ...]
    fmt: str = "table"
    fail_on: str = "high"
    version: str = ""

    @property
    def text(self) -> str:
        if self.fmt == "json":
            return format_json(list(self.findings))
        if self.fmt == "sarif":
            return json.dumps(to_sarif(list(self.findings), self.version), indent=2)
        return format_table(list(self.findings))

    @property
    def failing(self) -> list[Finding]:
        return at_or_above(self.findings, self.fail_on)

    def write(self, path: str, inputs: Sequence[str] = ()) -> None:
        """The report into `path` (--output), whole or not at all (write_whole), never over one of `inputs`; any
        failure is an OutputError (exit 2), never mistaken for findings (exit 1)."""
        try:
            write_whole(path, self.text + "\n", inputs=inputs)
        except (OSError, ValueError) as err:   # ValueError: a NUL byte in the path
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise OutputError(f"cannot write the report to {path}: {reason}") from None

    def check(self) -> None:
        """Raise AuditFailed (exit code 1) when a finding is at or above --fail-on."""
        if self.failing:
            raise AuditFailed(f"{len(self.failing)} finding(s) at or above severity {self.fail_on}")


