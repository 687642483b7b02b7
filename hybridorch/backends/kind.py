"""Local images into the nodes of a kind cluster, as `kind load docker-image` does, without the kind binary:
`docker save` the image and `ctr --namespace=k8s.io images import` it inside every node container.

Used by the kubernetes backend only. A kind cluster is known by its kubeconfig context (`kind-NAME`) or its
nodes' providerID (`kind://docker/NAME/NODE`); its node containers carry the docker label
`io.x-k8s.kind.cluster=NAME`.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

from hybridorch import proc
from hybridorch.backends.events import Event, EventKind, EventSink
from hybridorch.errors import BackendError

KIND_LABEL = "io.x-k8s.kind.cluster"
CONTAINERD_NAMESPACE = "k8s.io"   # the namespace the CRI plugin (and so kubelet) looks images up in
_PROVIDER = re.compile(r"kind://[^/]+/([^/]+)/")


def kind_cluster_name(context: str | None, provider_ids: Iterable[str]) -> str | None:
    """The kind cluster's name, from the context (`kind-NAME`) or a node's providerID; None for other clusters."""
    for pid in provider_ids:
        m = _PROVIDER.match(pid or "")
        if m:
            return m.group(1)
    if context and context.startswith("kind-") and len(context) > len("kind-"):
        return context[len("kind-"):]
    return None


def _docker(*args: str, what: str, stdin_file: str | None = None, timeout: float = 600,
            check: bool = True) -> proc.Completed[str]:
    return proc.run(["docker", *args], what=what, timeout=timeout, check=check,
                    stdin=Path(stdin_file) if stdin_file is not None else None,
                    missing="kind nodes are Docker containers: apt-get install docker.io")


def node_containers(cluster: str) -> list[str]:
    """The running node containers of kind cluster `cluster` in this machine's Docker engine."""
    out = _docker("ps", "--filter", f"label={KIND_LABEL}={cluster}", "--format", "{{.Names}}",
                  what=f"listing the nodes of kind cluster {cluster}").stdout
    nodes = sorted(proc.lines(out))
    if not nodes:
        raise BackendError(f"kind cluster {cluster}: this machine's Docker runs none of its node containers (label "
                           f"{KIND_LABEL}={cluster}), so its images cannot be loaded from here: load them with "
                           f"`kind load docker-image IMAGE --name {cluster}` where the cluster runs, or pass --no-load")
    return nodes


def image_id(ref: str) -> str | None:
    found = _docker("image", "inspect", "--format", "{{.Id}}", ref, what=f"inspecting image {ref}", check=False)
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def node_image_id(node: str, ref: str) -> str | None:
    """The image's ID (config digest, the same as Docker's image ID) as the node's CRI sees it; None if absent."""
    found = _docker("exec", node, "crictl", "inspecti", "-o", "json", ref, what=f"inspecting {ref} on node {node}",
                    check=False)
    if found.returncode != 0:
        return None
    try:
        return str(json.loads(found.stdout)["status"]["id"]) or None
    except (ValueError, KeyError, TypeError):
        return None


def snapshotter(node: str) -> str | None:
    """The snapshotter the node's CRI unpacks images with (what kind passes to `ctr images import`)."""
    dumped = _docker("exec", node, "containerd", "config", "dump", what=f"reading containerd's config on {node}",
                     check=False)
    if dumped.returncode != 0:
        return None
    try:
        import tomllib   # Python 3.11+; without it the import uses containerd's default snapshotter
        plugins = tomllib.loads(dumped.stdout).get("plugins", {})
    except (ImportError, ValueError):   # TOMLDecodeError is a ValueError
        return None
    # containerd 2 (config version 3) keeps it with the image service, 1.x under the CRI plugin
    found = (plugins.get("io.containerd.cri.v1.images") or {}).get("snapshotter") or \
        ((plugins.get("io.containerd.grpc.v1.cri") or {}).get("containerd") or {}).get("snapshotter")
    return str(found) if found else None


def load_images(cluster: str, refs: list[str], events: EventSink, only: Iterable[str] | None = None) -> list[str]:
    """Import every image of `refs` (present in the local Docker engine) into every node of the kind cluster (or
    the nodes named in `only`: those a pod may land on), skipping nodes that already hold the same image ID;
    returns one line per image loaded or skipped (and tells `events` about each). Nodes are asked and loaded
    in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    nodes = node_containers(cluster)
    if only is not None:
        wanted = set(only)
        nodes = [n for n in nodes if n in wanted] or nodes
    done: list[str] = []
    snapshotters: dict[str, str | None] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(len(nodes), 8)), thread_name_prefix="kind-load") as pool:
        for ref in dict.fromkeys(refs):
            local = image_id(ref)
            if local is None:
                raise BackendError(f"image {ref} is not in this machine's Docker engine, so it cannot be loaded "
                                   f"into kind cluster {cluster}: build it, or pass --no-load")
            held = list(pool.map(lambda n: node_image_id(n, ref), nodes))
            missing = [n for n, found in zip(nodes, held) if found != local]
            if not missing:
                done.append(f"image {ref}: already on {len(nodes)} node(s) of kind cluster {cluster}")
                events(Event(ref, EventKind.IMAGE_LOADED, f"already on {len(nodes)} node(s) of kind cluster "
                                                          f"{cluster}"))
                continue
            events(Event(ref, EventKind.IMAGE_LOADING, f"into {', '.join(missing)}"))
            for node in missing:
                if node not in snapshotters:
                    snapshotters[node] = snapshotter(node)
            with tempfile.TemporaryDirectory(prefix="hybridorch-load-") as tmp:
                archive = os.path.join(tmp, "image.tar")
                _docker("save", "-o", archive, ref, what=f"saving image {ref}")

                def load(node: str) -> None:
                    flags = [f"--snapshotter={snapshotters[node]}"] if snapshotters[node] else []
                    _docker("exec", "-i", node, "ctr", f"--namespace={CONTAINERD_NAMESPACE}", "images", "import",
                            "--all-platforms", "--digests", *flags, "-", stdin_file=archive,
                            what=f"loading image {ref} into kind node {node}")

                list(pool.map(load, missing))
            done.append(f"image {ref}: loaded into {', '.join(missing)}")
            events(Event(ref, EventKind.IMAGE_LOADED, f"into {', '.join(missing)}"))
    return done
