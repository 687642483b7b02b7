"""The Docker objects around a stack's containers: one bridge network per tenant and the named volumes, created
with the stack's labels; and removal of containers, networks and volumes that only ever touches the stack's own."""
from __future__ import annotations

from typing import Iterable

from hybridorch.core.labels import LABEL_MANAGED, LABEL_STACK, MANAGED_BY, object_labels
from hybridorch.backends.docker_api import Sdk
from hybridorch.backends.docker_names import stack_filter


def ensure_networks(sdk: Sdk, stack: str, wanted: dict[str, str], created: list[str]) -> set[str]:
    """The networks `wanted` (name -> tenant) that are missing, created; their names appended to `created`."""
    with sdk.call("listing networks"):
        existing = {n.name for n in sdk.client.networks.list(filters=stack_filter(stack))}
    for name, tenant in wanted.items():
        if name in existing:
            continue
        created.append(name)
        with sdk.call(f"creating network {name}"):
            # a bridge network per tenant: Docker isolates user-defined bridges from each other
            sdk.client.networks.create(name, driver="bridge", check_duplicate=True,
                                       labels=object_labels(stack, tenant=tenant))
    return set(wanted)


def ensure_volumes(sdk: Sdk, volumes: Iterable[tuple[str, dict[str, str]]], created: list[str]) -> None:
    """Create the missing named volumes with the stack's labels (Docker would make unlabelled ones)."""
    for name, labels in volumes:
        with sdk.call(f"creating volume {name}"):
            try:
                sdk.client.volumes.get(name)
                continue
            except sdk.errors.NotFound:
                pass
            created.append(name)
            sdk.client.volumes.create(name, driver="local", labels=labels)


def prune_networks(sdk: Sdk, stack: str, keep: set[str]) -> None:
    with sdk.call("listing networks"):
        networks = sdk.client.networks.list(filters=stack_filter(stack))
    for n in networks:
        if n.name not in keep:
            remove_network(sdk, n.name, stack)


def remove_container(sdk: Sdk, name: str, stack: str) -> list[str]:
    """Remove one container of `stack`; a same-named container that is not ours is never touched."""
    with sdk.call(f"removing container {name}"):
        try:
            container = sdk.client.containers.get(name)
            if not _belongs(container.labels, stack):
                return []
            container.remove(force=True, v=True)
        except sdk.errors.NotFound:
            return []
    return [f"container {name}"]


def remove_network(sdk: Sdk, name: str, stack: str) -> list[str]:
    with sdk.call(f"removing network {name}"):
        try:
            network = sdk.client.networks.get(name)
            if not _belongs(network.attrs.get("Labels"), stack):
                return []
            network.remove()
        except sdk.errors.NotFound:
            return []
    return [f"network {name}"]


def remove_volume(sdk: Sdk, name: str, stack: str) -> list[str]:
    with sdk.call(f"removing volume {name}"):
        try:
            volume = sdk.client.volumes.get(name)
            if not _belongs(volume.attrs.get("Labels"), stack):
                return []
            volume.remove(force=True)
        except sdk.errors.NotFound:
            return []
    return [f"volume {name}"]


def _belongs(labels: dict[str, str] | None, stack: str) -> bool:
    labels = labels or {}
    return labels.get(LABEL_MANAGED) == MANAGED_BY and labels.get(LABEL_STACK) == stack
