"""How the Docker backend names what it makes (containers, tenant networks, volumes) and finds a stack's objects
again by label."""
from __future__ import annotations

from hybridorch.core.labels import replica_name, selector_terms


def network_name(stack: str, tenant: str) -> str:
    return f"hybridorch-{stack}-{tenant}"


def container_name(stack: str, workload: str, replica: int) -> str:
    return replica_name(f"{stack}-{workload}", replica)


def volume_name(stack: str, workload: str, replica: int, volume: str) -> str:
    """One named volume per replica and spec volume, like a StatefulSet's claim per pod: data outlives the
    container (a changed spec replaces the container, not its data) and `down`, unless --delete-data."""
    return f"hybridorch-{container_name(stack, workload, replica)}-{volume}"


def stack_filter(stack: str) -> dict[str, list[str]]:
    return {"label": selector_terms(stack)}
