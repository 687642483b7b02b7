"""The kubernetes backend's images: before anything is applied, the stack's locally built images are built and
loaded into the nodes of a kind cluster (kind.py), or refused when the nodes of another cluster cannot have them.
On kind, every other image of the stack that this machine's Docker engine holds (a user's `docker build -t
myapp:dev`) is loaded too, as `kind load docker-image`, Skaffold and Tilt do; the rest is left to its registry."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

from hybridorch.backends.events import Event, EventKind
from hybridorch.core import images
from hybridorch.errors import BackendError

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.backends.kubernetes import KubernetesBackend


def prepare_images(backend: KubernetesBackend, plan: Plan, docs: list[dict[str, Any]]) -> list[str]:
    """Make the stack's locally built images available to the nodes before anything is applied: on a kind
    cluster, build the missing ones and load them into every node; on any other cluster, fail in one line when
    a node that may run a pod lacks one (nodes report the images they hold; kwok's fake nodes pull nothing)."""
    # a containerDisk matters only where KubeVirt runs it; CRDs alone never pull it
    has_vms = any(d.get("kind") == "VirtualMachine" for d in docs)
    wanted = pod_images(docs, vms=has_vms and _kubevirt_runs(backend))
    local = {ref: where for ref, where in wanted.items() if images.is_local(ref)}
    from hybridorch.backends.kind import image_id, kind_cluster_name, load_images

    if not local and kind_cluster_name(backend.current_context(), []) is None:
        return []   # only a kind cluster's nodes take the user's own images from here: no need to list nodes
    nodes = backend.get_json("nodes")

    cluster = kind_cluster_name(backend.current_context(), [(n.get("spec") or {}).get("providerID", "")
                                                            for n in nodes])
    if cluster is not None:
        guests = {ref: where[0] for ref, where in local.items() if images.is_guest_image(ref)}
        if guests:
            _build_guest_images(backend, plan, docs, guests)
        if len(guests) < len(local):
            _build_images(backend, plan, [ref for ref in local if ref not in guests])
        # the user's own local builds: a node would otherwise try a registry that never had them (ErrImagePull)
        own = [ref for ref in wanted if ref not in local and image_id(ref) is not None]
        return load_images(cluster, list(local) + own, backend.events)
    for ref, (workload, node_selector) in local.items():
        eligible = [n for n in nodes if _matches(node_selector, (n.get("metadata") or {}).get("labels") or {})]
        lacking = [n["metadata"]["name"] for n in eligible if not _node_has(n, ref)]
        if lacking:
            name = ref[len(images.LOCAL_REGISTRY) + 1:]
            raise BackendError(
                f"image {ref} (workload {workload}) was built on this machine and node {lacking[0]} of "
                f"{backend.where} cannot pull it: push it (`docker tag {ref} REGISTRY/{name} && docker push "
                f"REGISTRY/{name}`, then use that image in the stack) or load it into every node, then apply "
                "again (--no-load skips this check); nothing was applied")
    return []


def _build_images(backend: KubernetesBackend, plan: Plan, refs: list[str]) -> None:
    """Build missing content-tagged images from their recipes, through the Docker backend's builder."""
    from hybridorch.backends.base import get_backend

    dirs = images.image_dirs(plan.stack.file)
    named = [ref for p in plan.placements for ref in (p.workload.image, p.workload.vm.disk_image) if ref]
    sources = {images.content_ref(ref, dirs): ref for ref in named if images.is_local(ref)}
    missing = [sources.get(ref, ref) for ref in refs]
    builder: Any = get_backend("docker", events=backend.events)
    builder.ensure_images(missing, plan.stack.file)


def _build_guest_images(backend: KubernetesBackend, plan: Plan, docs: list[dict[str, Any]],
                        guests: dict[str, str]) -> None:
    """The busybox guest of each nested VM in `guests` (kernelBoot image -> VirtualMachine name): the initramfs
    the local target boots (the same program, inner images exported from the local engine), with the guest
    kernel, as an image."""
    import tempfile
    from pathlib import Path

    from hybridorch.vm.programs import program_for
    from hybridorch.core.labels import LABEL_WORKLOAD
    from hybridorch.vm.board_image import guest_image
    from hybridorch.vm.boot import build_board_initrd

    for ref, name in guests.items():
        vm = next(d for d in docs if d.get("kind") == "VirtualMachine" and d["metadata"]["name"] == name)
        workload = vm["metadata"]["labels"][LABEL_WORKLOAD]
        p = next(p for p in plan.placements if p.name == workload)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="hybridorch-guest-") as work:
            initrd = build_board_initrd(p.workload.arch, program_for(p.workload, p.runtime, plan.stack.name),
                                        Path(work))
            built = guest_image(ref, p.workload.arch, initrd)
        if built:
            backend.events(Event(ref, EventKind.IMAGE_BUILT, f"the busybox guest of {workload} in "
                                                             f"{time.monotonic() - t0:.1f}s"))


def _kubevirt_runs(backend: KubernetesBackend) -> bool:
    from hybridorch.backends.kube_status import kubevirt_present

    return kubevirt_present(backend)


def pod_images(docs: Iterable[dict[str, Any]], vms: bool = False) -> dict[str, tuple[str, dict[str, str]]]:
    """Every image the pod templates of `docs` run -> (its workload, the pod's nodeSelector); with `vms`, also the
    VirtualMachines' containerDisks and kernelBoot images, which KubeVirt runs as containers of virt-launcher."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for d in docs:
        name = (d.get("metadata") or {}).get("name", "")
        pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        if d.get("kind") in ("Deployment", "StatefulSet"):
            refs = [c.get("image") for c in (pod.get("initContainers") or []) + (pod.get("containers") or [])]
        elif d.get("kind") == "VirtualMachine" and vms:
            boot = (((pod.get("domain") or {}).get("firmware") or {}).get("kernelBoot") or {}).get("container") or {}
            refs = [boot.get("image")] + [(v.get("containerDisk") or {}).get("image") for v in pod.get("volumes") or []]
        else:
            continue
        for ref in filter(None, refs):
            out.setdefault(ref, (name, pod.get("nodeSelector") or {}))
    return out


def _matches(node_selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in node_selector.items())


def _node_has(node: dict[str, Any], ref: str) -> bool:
    """A node can run `ref` when it reports holding it, or when it is one of kwok's fake nodes (which run nothing)."""
    if ((node.get("metadata") or {}).get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake":
        return True
    names = {n for img in (node.get("status") or {}).get("images") or [] for n in img.get("names") or []}
    return ref in names or f"docker.io/{ref}" in names
