"""Gather what the audit rules (audit.py) look at: the input files, a stack's plan and rendered output, cached guest
images and, with --live, what runs (Docker containers and QEMU VMs by their labels and state, or the cluster).

Runtimes are only read, through the engine interface (Backend.live_facts: plain data the rules take).
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Callable

from hybridorch.backends.base import LiveFacts, get_backend
from hybridorch import proc
from hybridorch.core.safeload import compose_documents, no_gc, read_input, split_documents
from hybridorch.ops import audit, foreign
from hybridorch.ops.audit import Context, Finding
from hybridorch.errors import BackendError, Problem, SpecError
from hybridorch.core.labels import LABEL_STACK, LABEL_WORKLOAD
from hybridorch.core.plan import Plan
from hybridorch.core.policy import PROFILES, Profile
from hybridorch.core.spec import Workload

LIVE_TARGETS = ("local", "kubernetes")


def audit_files(paths: list[str], *, policy: str | None = None, hosts: str | None = None,
                templates: str | None = None, live: bool = False, target: str = "local",
                context: str | None = None, namespace_prefix: str = "", max_image_age: int | None = None,
                now: float | None = None) -> list[Finding]:
    """Every finding on every file: stack files (plan, both renderings, cached guests, and what runs with
    `live`), Kubernetes manifests, libvirt domain XML and cloud-init user data given directly."""
    from hybridorch.core.plan import plan_stack
    from hybridorch.core.policyfile import resolve_policy

    now = time.time() if now is None else now
    default_profile = _policy(policy, resolve_policy)
    findings: list[Finding] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            # the one reader: regular files only, size-limited, UTF-8 (a BOM dropped), never quoting the content
            text = read_input(path, "text")
            kind = _kind(path, text)
            if kind == "stack":
                plan = plan_stack(path, policy, hosts)
                findings += audit_plan(plan, templates=templates, max_image_age=max_image_age, now=now)
                if live:
                    findings += audit_running(plan, target, context=context, namespace_prefix=namespace_prefix,
                                              max_image_age=max_image_age, now=now)
            else:
                ctx = Context(default_profile, now, max_image_age)
                findings += _audit_plain(path, text, kind, ctx)
        except SpecError as err:
            problems += err.problems
    if problems:
        raise SpecError(problems)
    return audit.dedupe(findings)


def _policy(policy: str | None, resolve: Callable[..., Profile]) -> Profile:
    if policy is None:
        return PROFILES["balanced"]
    if policy in PROFILES:
        return PROFILES[policy]
    from hybridorch.core.policyfile import load_policy

    if not os.path.exists(policy):
        from hybridorch.errors import PolicyError

        raise PolicyError(f"policy {policy!r} is neither {', '.join(PROFILES)} nor an existing file")
    return load_policy(policy)


def _kind(path: str, text: str) -> str:
    """What a file is. A stack is a file whose first document has hybridorch's apiVersion and kind Stack; anything
    else of kind Stack is a foreign object, audited like the documents after it."""
    head = text.lstrip()
    if path.endswith(".xml") or head.startswith("<"):
        return "domain"
    if head.startswith("#cloud-config"):
        return "cloud-init"
    # only the first document decides (through the safe reader): a stack is read again by its own loader, and
    # manifests whole or, when large, in parts (_audit_manifests)
    nodes = compose_documents(text, path, limit=1)
    return "stack" if nodes and foreign.is_stack(nodes[0]) else "manifests"


def _audit_plain(path: str, text: str, kind: str, ctx: Context) -> list[Finding]:
    """A file that is already rendered: Kubernetes/KubeVirt objects, a libvirt domain or cloud-init user data.

    Its findings are kept one per object and line (not merged per workload as a stack's are)."""
    return [replace(f, workload="") for f in _audit_rendered_file(path, text, kind, ctx)]


def _audit_rendered_file(path: str, text: str, kind: str, ctx: Context) -> list[Finding]:
    if kind == "domain":
        return audit.check_domain(text, ctx, lambda line, _w: (path, line), path)
    if kind == "cloud-init":
        documents = compose_documents(text, path)
        first = documents[0] if documents else None
        return audit.check_cloud_init(text, ctx, lambda key: (path, foreign.node_line(first, key) if first else 1),
                                      f"user-data {os.path.basename(path)}", file=path)
    if len(text) >= PARALLEL_BYTES:
        return _audit_manifests(path, text, ctx)
    # millions of acyclic nodes and small dicts: the cyclic collector would rescan them all again and again
    with no_gc():
        objects = foreign.read_manifests(compose_documents(text, path), path)
        return audit.check_objects([o.doc for o in objects], ctx, lambda i, p: (path, objects[i].line(p)))


# a manifest stream this large is read and checked in parts, one forked worker per CPU (100,000 objects: ~30 MiB)
PARALLEL_BYTES = 2 * 2**20


def _audit_manifests(path: str, text: str, ctx: Context) -> list[Finding]:
    """A large manifest stream cut at document starts, each part composed, read and checked in its own process;
    the parts' scans merged in order, then the namespace rule over all of them. Same findings, same lines."""
    parts = split_documents(text, proc.workers())
    scan, problems = audit.ObjectScan(), []
    for part_scan, part_problems in proc.map_forked(_scan_part, [(path, offset, part, ctx) for offset, part in parts]):
        if part_scan is not None:
            scan.merge(part_scan)
        problems += part_problems
    if problems:
        raise SpecError(problems)
    return scan.findings + scan.uncovered(ctx)


def _scan_part(path: str, offset: int, part: str, ctx: Context) -> tuple[audit.ObjectScan | None, list[Problem]]:
    """One part of a manifest stream (its first line is line offset + 1 of the file): its scan, or its problems."""
    try:
        with no_gc():
            objects = foreign.read_manifests(compose_documents(part, path), path)
            return audit.scan_objects([o.doc for o in objects], ctx,
                                      lambda i, p: (path, objects[i].line(p) + offset)), []
    except SpecError as err:
        return None, [replace(p, line=p.line + offset if p.line else 0) for p in err.problems]


# --- a stack: its plan and both renderings ----------------------------------------------------------------

def _stack_context(plan: Plan, now: float, max_image_age: int | None) -> Context:
    return Context(plan.profile, now, max_image_age, {w.name: w for w in plan.stack.workloads})


def _stack_locate(plan: Plan) -> Callable[[str, str], tuple[str, int]]:
    where = audit.stack_where(plan.stack)

    def locate(workload: str, fld: str = "") -> tuple[str, int]:
        return where.at(workload, fld)
    return locate


def audit_plan(plan: Plan, *, templates: str | None = None, max_image_age: int | None = None,
               now: float | None = None) -> list[Finding]:
    """The plan, its Kubernetes rendering, its local rendering (domains and cloud-init) and the cached guests."""
    from hybridorch.render.stack import render_plan

    ctx = _stack_context(plan, time.time() if now is None else now, max_image_age)
    locate = _stack_locate(plan)
    out = audit.check_plan(plan, ctx)
    k8s = render_plan(plan, target="kubernetes", templates_dir=templates)
    docs = list(k8s.documents)
    out += audit.check_objects(docs, ctx, lambda i, _p: locate(_workload_of(docs[i], plan), ""))
    local = render_plan(plan, target="local", templates_dir=templates)
    for f in local.files:
        workload = f.path.split("/", 1)[0]

        # findings in a workload's domain point at the workload, in its user data at vm.userData
        def in_domain(_line: int, labelled: str, workload: str = workload) -> tuple[str, int]:
            return locate(labelled or workload, "")

        def in_user_data(_key: str, workload: str = workload) -> tuple[str, int]:
            return locate(workload, "vm.userData")
        if f.path.endswith("/domain.xml"):
            out += audit.check_domain(f.content, ctx, in_domain)
        elif f.path.endswith("/user-data"):
            out += audit.check_cloud_init(f.content, ctx, in_user_data, f"user-data of {workload}", workload)
    out += _guest_images(plan, ctx, locate)
    return out


def _workload_of(doc: dict[str, Any], plan: Plan, namespace_prefix: str = "") -> str:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    if labels.get(LABEL_WORKLOAD):
        return str(labels[LABEL_WORKLOAD])
    # tenant objects: the first workload of that tenant
    ns = (doc.get("metadata") or {}).get("name") if doc.get("kind") == "Namespace" else \
        (doc.get("metadata") or {}).get("namespace")
    return next((w.name for w in plan.stack.workloads if ns == namespace_prefix + w.tenant), "")


def _guest_images(plan: Plan, ctx: Context, locate: Callable[[str, str], tuple[str, int]]) -> list[Finding]:
    """Local guests (kernel + initramfs fetched from Debian) age like any image: their guest.json says when."""
    if ctx.max_image_age is None:
        return []
    from hybridorch.core.runtime import LOCAL_ARCHES, VM_RUNTIMES
    from hybridorch.vm.guestimage import guest_dir

    out: list[Finding] = []
    for p in plan.placements:
        if p.runtime not in VM_RUNTIMES or p.workload.arch not in LOCAL_ARCHES:
            continue
        marker = guest_dir(p.workload.arch) / "guest.json"
        try:
            built = marker.stat().st_mtime
        except OSError:
            continue   # not fetched here: nothing local to age
        out += audit.check_image_age(f"local {p.workload.arch} guest {marker.parent}", built, ctx,
                                     locate(p.name, "vm"), f"workload {p.name}", p.name)
    return out


# --- what runs ------------------------------------------------------------------------------------------

def audit_running(plan: Plan, target: str, *, context: str | None = None, namespace_prefix: str = "",
                  max_image_age: int | None = None, now: float | None = None) -> list[Finding]:
    if target not in LIVE_TARGETS:
        raise BackendError(f"unknown live target {target!r}: use {' or '.join(LIVE_TARGETS)}")
    ctx = replace(_stack_context(plan, time.time() if now is None else now, max_image_age), live=True)
    options = {"context": context, "namespace_prefix": namespace_prefix} if target == "kubernetes" else {}
    # a BackendError naming the engine when it is unreachable
    facts = get_backend(target, **options).live_facts(plan)
    return (_running_containers(plan, ctx, facts) + _running_vms(plan, ctx, facts)
            + _running_objects(plan, ctx, facts, namespace_prefix))


def _running_containers(plan: Plan, ctx: Context, facts: LiveFacts) -> list[Finding]:
    locate = _stack_locate(plan)
    return [f for c in facts.containers
            for f in audit.check_container(c.attrs, c.image_created, ctx, locate(c.workload, ""))]


def _running_vms(plan: Plan, ctx: Context, facts: LiveFacts) -> list[Finding]:
    """Local VMs of the stack: the state records the VM engine keeps beside each running VM."""
    locate = _stack_locate(plan)
    workloads = {w.name: w for w in plan.stack.workloads}
    out: list[Finding] = []
    for vm in facts.vms:
        w: Workload | None = workloads.get(vm.workload)
        out += audit.check_local_vm(vm.state, w, ctx, locate(w.name if w else "", ""))
        if w is not None and not (w.owner and w.ttl):
            missing = [x for x, v in (("owner", w.owner), ("ttl", w.ttl)) if not v]
            out.append(ctx.finding("HYB013", f"running VM {w.name} has no {' and no '.join(missing)}",
                                   locate(w.name, ""), f"vm {plan.stack.name}/{w.name}", w.name))
    return out


def _running_objects(plan: Plan, ctx: Context, facts: LiveFacts, namespace_prefix: str) -> list[Finding]:
    """Cluster objects of the stack, and the snapshots of its VMs (found by the VM they copy: no stack label)."""
    objects = list(facts.objects)
    if not objects:
        return []   # a local target has none
    locate = _stack_locate(plan)
    stack = plan.stack.name

    def where(i: int, _path: str) -> tuple[str, int]:
        doc = objects[i]
        workload = _workload_of(doc, plan, namespace_prefix) if (doc["metadata"].get("labels") or {}).get(LABEL_STACK) == stack \
            else str((doc.get("spec") or {}).get("source", {}).get("name", ""))
        return locate(workload, "")
    return audit.check_objects(objects, ctx, where)
