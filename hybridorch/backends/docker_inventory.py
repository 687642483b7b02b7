"""What hybridorch made on the local Docker engine, found by its labels: the containers `ps` lists and `gc`
removes, and what the live audit reads of one stack's containers (the Docker backend's inventory side)."""
from __future__ import annotations

from typing import Any

from hybridorch.backends.base import LiveContainer, LiveFacts, Made, Managed, Removal
from hybridorch.core.durations import parse_time
from hybridorch.core.runtime import runtime_of
from hybridorch.core.labels import (LABEL_MANAGED, LABEL_OWNER, LABEL_RUNTIME, LABEL_STACK, LABEL_TTL, LABEL_WORKLOAD,
                                    MANAGED_BY, selector_terms)
from hybridorch.errors import BackendError

# containers in these states are what runs (or is about to): the live audit leaves exited ones alone
LIVE_STATES = frozenset({"running", "restarting", "paused", "created"})


def managed_containers(client: Any) -> list[Managed]:
    """Every container carrying hybridorch's label, whatever stack it belongs to; its age counts from its start."""
    try:
        containers = client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}={MANAGED_BY}"},
                                            ignore_removed=True)
    except Exception as err:  # noqa: BLE001 - the SDK's errors, turned into ours at this boundary
        raise BackendError(f"listing hybridorch's containers: {err}") from err
    out = []
    for c in containers:
        labels = c.labels or {}
        state = c.attrs.get("State") or {}
        started = parse_time(state.get("StartedAt")) if state.get("Running") else None
        out.append(Managed("local", Made.CONTAINER, c.name, "", labels.get(LABEL_STACK, ""),
                           labels.get(LABEL_WORKLOAD, ""), runtime_of(labels.get(LABEL_RUNTIME)),
                           labels.get(LABEL_OWNER), labels.get(LABEL_TTL),
                           started or parse_time(c.attrs.get("Created"))))
    return out


def remove_containers(client: Any, items: list[Managed], keep_data: bool) -> Removal:
    """The containers among `items`. Named volumes are separate objects and stay, as with `down`, unless not
    `keep_data`: then the container's volumes that carry hybridorch's label go with it."""
    removed: list[str] = []
    for m in items:
        if m.kind != Made.CONTAINER:
            continue
        try:
            c = client.containers.get(m.name)
            if (c.labels or {}).get(LABEL_MANAGED) != MANAGED_BY:
                continue   # the name was reused by something that is not ours
            volumes = [v["Name"] for v in c.attrs.get("Mounts") or [] if v.get("Type") == "volume" and v.get("Name")]
            c.remove(force=True, v=not keep_data)
            removed.append(f"container {m.name}")
        except Exception as err:  # noqa: BLE001 - gone meanwhile is fine; anything else is reported
            if "No such container" not in str(err) and "404" not in str(err):
                raise BackendError(f"removing container {m.name}: {err}") from err
            continue
        if not keep_data:
            removed += _remove_volumes(client, volumes)
    return Removal(tuple(removed))


def _remove_volumes(client: Any, names: list[str]) -> list[str]:
    removed = []
    for name in names:
        try:
            volume = client.volumes.get(name)
            if (volume.attrs.get("Labels") or {}).get(LABEL_MANAGED) != MANAGED_BY:
                continue
            volume.remove(force=True)
            removed.append(f"volume {name}")
        except Exception as err:  # noqa: BLE001 - gone meanwhile is fine; anything else is reported
            if "No such volume" not in str(err) and "404" not in str(err):
                raise BackendError(f"removing volume {name}: {err}") from err
    return removed


def live_containers(client: Any, stack: str) -> LiveFacts:
    """The stack's containers that run, each with the age of its image (unknown when the image is gone)."""
    try:
        containers = client.containers.list(all=True, filters={"label": selector_terms(stack)})
    except Exception as err:  # noqa: BLE001 - the SDK's errors, turned into ours at this boundary
        raise BackendError(f"listing the containers of stack {stack}: {err}") from err
    out = []
    for c in containers:
        attrs = c.attrs
        if (attrs.get("State") or {}).get("Status") not in LIVE_STATES:
            continue
        try:
            image_created = parse_time(client.images.get(attrs.get("Image")).attrs.get("Created"))
        except Exception:  # noqa: BLE001 - image removed meanwhile: its age is unknown, not an error
            image_created = None
        workload = ((attrs.get("Config") or {}).get("Labels") or {}).get(LABEL_WORKLOAD, "")
        out.append(LiveContainer(workload, attrs, image_created))
    return LiveFacts(containers=tuple(out))
