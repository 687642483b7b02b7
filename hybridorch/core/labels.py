"""Labels that mark everything hybridorch creates, so apply/prune/down find exactly its own objects, and the
names of a workload's replicas (one function per form, used by render, the engines, snapshots and audit)."""
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


# --- replica names: every form in one place ------------------------------------------------------------------
# The forms differ because the places differ (a DNS name, a directory, a sentence); each has one function here.
LABEL_REPLICA = "hybridorch.dev/replica"


def replica_name(name: str, replica: int) -> str:
    """NAME-i: a replica among several, as Kubernetes names StatefulSet pods; Docker containers
    (<stack>-<workload>-i) and libvirt domains (hyb-<stack>-<workload>-i) put their prefix in `name`."""
    return f"{name}-{replica}"


def replica_names(name: str, replicas: int) -> list[str]:
    """The KubeVirt VMs of a workload: NAME alone for one replica, NAME-0..NAME-(N-1) for several."""
    return [name] if replicas == 1 else [replica_name(name, i) for i in range(replicas)]


def replica_path(name: str, replica: int) -> str:
    """A replica's directory in the local rendering: NAME for replica 0, NAME-i for the others."""
    return name if replica == 0 else replica_name(name, replica)


def replica_dir(name: str, replica: int) -> str:
    """A replica's state dir (and how audit names its VM): NAME for replica 0, NAME.i for the others (a DNS-label
    workload name has no '.', so no replica's dir is another workload's)."""
    return name if replica == 0 else f"{name}.{replica}"


def replica_title(name: str, replica: int) -> str:
    """A replica in a sentence or a domain title: NAME for replica 0, 'NAME replica i' for the others."""
    return name if replica == 0 else f"{name} replica {replica}"


def replica_ref(name: str, replica: int) -> str:
    """A replica in the packing's host lists: NAME/i."""
    return f"{name}/{replica}"
