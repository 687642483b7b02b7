"""How the kubernetes backend reaches kubectl: which binary it runs, and one line that says what a failed call
means and what to do about it (no context, unreachable server, missing CRD, denied by RBAC...)."""
from __future__ import annotations

import glob
import os
import re
import shutil

from hybridorch.core.runtime import cache_root
from hybridorch.errors import BackendError

KUBECTL_MISSING = "install kubectl or set HYBRIDORCH_KUBECTL"
REQUEST_TIMEOUT = "30s"
NO_CLUSTER = "no Kubernetes cluster configured: set KUBECONFIG to a kubeconfig file or pass --context"


def find_kubectl() -> str:
    """$HYBRIDORCH_KUBECTL, else the kubectl built by e2e/k8s/build.sh (newest version), else PATH."""
    explicit = os.environ.get("HYBRIDORCH_KUBECTL")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise BackendError(f"HYBRIDORCH_KUBECTL={explicit} is not an executable file: fix or unset it")
        return explicit
    cache = cache_root() / "k8s"
    built = sorted(glob.glob(str(cache / "v*" / "bin" / "kubectl")), key=_version_key)
    if built:
        return built[-1]
    found = shutil.which("kubectl")
    if not found:
        raise BackendError("kubectl not found: install kubectl (Debian package kubectl) or set HYBRIDORCH_KUBECTL "
                           "to its path")
    return found


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"/v(\d+)\.(\d+)\.(\d+)/", path)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def explain_kubectl_error(stderr: str, where: str) -> str:
    """One line that says what went wrong talking to the cluster and what to do about it."""
    text = " ".join(stderr.split())
    m = re.search(r'context "([^"]+)" does not exist|no context exists with the name: "?([^"\s]+)"?'
                  r'|context was not found for specified context: (\S+)', text)
    if m:
        name = m.group(1) or m.group(2) or m.group(3)
        return (f"kubeconfig has no context {name!r}: list the contexts with `kubectl config get-contexts` "
                "and pass one with --context")
    if "localhost:8080" in text and "refused" in text:
        return NO_CLUSTER
    if any(s in text for s in ("Unable to connect to the server", "connection refused", "was refused", "no such host",
                               "i/o timeout", "dial tcp", "context deadline exceeded", "TLS handshake timeout",
                               "Client.Timeout exceeded")):
        server = re.search(r'https?://[^\s/"]+|\d+\.\d+\.\d+\.\d+:\d+|\[[0-9a-f:]+\]:\d+', text)
        at = f" at {server.group(0)}" if server else ""
        return (f"cannot reach the Kubernetes API server{at} ({where}): start the cluster, or point KUBECONFIG/"
                "--context at a running one")
    m = re.search(r'no matches for kind "([^"]+)" in version "([^"]+)"', text)
    if m:
        kind, version = m.groups()
        hint = "install KubeVirt (its CRDs) in the cluster" if "kubevirt.io" in version else \
            f"install the CRD that defines {kind}"
        return f"the cluster does not know kind {kind} ({version}): {hint}, or place the workload differently"
    m = re.search(r"the server could not find the requested resource \(\w+ ([a-z0-9.]+)", text)
    if m and "kubevirt.io" in m.group(1):
        return (f"the cluster does not serve {m.group(1)}: install KubeVirt (its CRDs) in the cluster, or place "
                "the workload differently")
    m = re.search(r'the server doesn\'t have a resource type "([^"]+)"', text)
    if m:
        return f"the cluster has no resource type {m.group(1)!r}: install the CRD that defines it"
    if "Unauthorized" in text or "You must be logged in to the server" in text:
        return (f"the API server rejected the credentials of {where} (Unauthorized): refresh the kubeconfig's "
                "credentials")
    denied = permission_denied(text, where)
    if denied or "forbidden" in text.lower() and "pod security" not in text.lower():
        return denied or f"permission denied ({where}): {_first_error(text)}; ask a cluster admin for RBAC rights"
    return f"kubectl failed ({where}): {_first_error(text)}"


def permission_denied(text: str, where: str) -> str | None:
    """The API server's RBAC refusal (from kubectl or the client's 403 body) as who may not do what, where."""
    m = re.search(r'(User|ServiceAccount|Group) "([^"]+)" cannot (\w+) resource "([^"]+)"(?: in API group "([^"]*)")?'
                  r'(?: in the namespace "([^"]+)"| at the cluster scope)?', text)
    if not m:
        return None
    who, verb, res, group, ns = m.group(2), m.group(3), m.group(4), m.group(5), m.group(6)
    full = f"{res}.{group}" if group else res
    scope = f" in namespace {ns}" if ns else " at cluster scope"
    return (f"permission denied: {who} may not {verb} {full}{scope} ({where}): ask a cluster admin for an "
            "RBAC role that allows it, or use another --context")


def _first_error(text: str) -> str:
    text = re.sub(r"^(error: |Error from server(?: \([A-Za-z]+\))?: )", "", text.strip())
    return text[:400] if text else "no error output"
