"""The Docker objects around a stack's containers: one bridge network per tenant and the named volumes, created
with the stack's labels; and removal of containers, networks and volumes that only ever touches the stack's own."""
from __future__ import annotations

from typing import Any, Iterable

from hybridorch.core.labels import LABEL_MANAGED, LABEL_STACK, MANAGED_BY, object_labels
from hybridorch.backends.docker_api import Sdk
from hybridorch.backends.docker_names import stack_filter


def stack_networks(sdk: Sdk, stack: str) -> dict[str, list[Any]]:
    """The stack's networks (found by its labels) by name, oldest first: Docker lets two networks share a name
    (two runs that once raced each made one), so a name alone may be ambiguous; an ID never is."""
    with sdk.call("listing networks"):
        found = sdk.client.networks.list(filters=stack_filter(stack))
    by_name: dict[str, list[Any]] = {}
    for n in sorted(found, key=lambda n: created_key(n.attrs)):
        by_name.setdefault(n.name, []).append(n)
    return by_name


def created_key(attrs: dict[str, Any]) -> tuple[str, str, str]:
    """Sorts Docker objects oldest first, then by ID: `Created` is RFC 3339 with a fraction of varying length."""
    stamp = str(attrs.get("Created") or "")
    whole, _, rest = stamp.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())
    return whole, fraction.ljust(9, "0"), str(attrs.get("Id") or "")


def ensure_networks(sdk: Sdk, stack: str, wanted: dict[str, str], created: list[str]) -> dict[str, str]:
    """The network ID each name of `wanted` (name -> tenant) uses: the oldest of the stack's networks of that name
    (extra empty ones removed), else a new one whose ID is appended to `created`."""
    existing = stack_networks(sdk, stack)
    ids: dict[str, str] = {}
    for name, tenant in wanted.items():
        if name in existing:
            keep, *extra = existing[name]
            ids[name] = keep.id
            for n in extra:
                remove_network(sdk, n.id, stack, only_empty=True)
            continue
        with sdk.call(f"creating network {name}"):
            # a bridge network per tenant: Docker isolates user-defined bridges from each other
            made = sdk.client.networks.create(name, driver="bridge", check_duplicate=True,
                                              labels=object_labels(stack, tenant=tenant))
        created.append(made.id)
        ids[name] = made.id
    return ids


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
    """Remove the stack's networks whose ID is not in `keep` (tenants that left, extra same-named ones)."""
    for found in stack_networks(sdk, stack).values():
        for n in found:
            if n.id not in keep:
                remove_network(sdk, n.id, stack)


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


def remove_network(sdk: Sdk, network_id: str, stack: str, *, only_empty: bool = False) -> list[str]:
    """Remove one network of `stack` by its ID (a name may be ambiguous); `only_empty`: not while a container is
    attached to it (an extra same-named network a container of a killed run still uses goes with `down`)."""
    with sdk.call(f"removing network {network_id[:12]}"):
        try:
            network = sdk.client.networks.get(network_id)
            if not _belongs(network.attrs.get("Labels"), stack):
                return []
            if only_empty and network.attrs.get("Containers"):
                return []
            network.remove()
        except sdk.errors.NotFound:
            return []
    return [f"network {network.name}"]


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
