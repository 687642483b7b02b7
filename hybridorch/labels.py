"""Labels that mark everything hybridorch creates, so apply/prune/down find exactly its own objects."""
from __future__ import annotations

MANAGED_BY = "hybridorch"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_STACK = "hybridorch.dev/stack"
LABEL_WORKLOAD = "hybridorch.dev/workload"
LABEL_RUNTIME = "hybridorch.dev/runtime"
LABEL_TENANT = "hybridorch.dev/tenant"


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


def selector_terms(stack: str) -> list[str]:
    """The label terms every object of one stack carries (docker's `label` filter takes them as a list)."""
    return [f"{LABEL_MANAGED}={MANAGED_BY}", f"{LABEL_STACK}={stack}"]


def selector(stack: str) -> str:
    """A label selector (kubectl -l) for every object of one stack."""
    return ",".join(selector_terms(stack))
