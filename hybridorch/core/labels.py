"""Labels that mark everything hybridorch creates, so apply/prune/down find exactly its own objects."""
from __future__ import annotations

MANAGED_BY = "hybridorch"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_STACK = "hybridorch.dev/stack"
LABEL_WORKLOAD = "hybridorch.dev/workload"
LABEL_RUNTIME = "hybridorch.dev/runtime"
LABEL_TENANT = "hybridorch.dev/tenant"
# Lifecycle: who answers for a workload and how long it may live (gc and audit read them back from what runs)
LABEL_OWNER = "hybridorch.dev/owner"
LABEL_TTL = "hybridorch.dev/ttl"


def object_labels(stack: str, workload: str | None = None, runtime: str | None = None,
                  tenant: str | None = None) -> dict[str, str]:
    out = {LABEL_MANAGED: MANAGED_BY, LABEL_STACK: stack}
    if workload:
        out[LABEL_WORKLOAD] = workload
    if runtime:
        out[LABEL_RUNTIME] = runtime
    if tenant:
        out[LABEL_TENANT] = tenant
    return out


def lifecycle_labels(owner: str | None, ttl: str | None) -> dict[str, str]:
    """The owner/ttl labels of a stack or workload (spec.py merges them into its labels, which render puts on every
    Kubernetes object, KubeVirt VM and libvirt domain and the docker backend on every container and network)."""
    out = {}
    if owner:
        out[LABEL_OWNER] = owner
    if ttl:
        out[LABEL_TTL] = ttl
    return out


def selector_terms(stack: str) -> list[str]:
    """The label terms every object of one stack carries (docker's `label` filter takes them as a list)."""
    return [f"{LABEL_MANAGED}={MANAGED_BY}", f"{LABEL_STACK}={stack}"]


def selector(stack: str) -> str:
    """A label selector (kubectl -l) for every object of one stack."""
    return ",".join(selector_terms(stack))
