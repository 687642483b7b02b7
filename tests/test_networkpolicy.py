"""Tenant isolation in the rendered NetworkPolicies, table-driven: who may connect to which declared port.

The rendered objects are evaluated with the NetworkPolicy semantics of networking.k8s.io/v1 (a pod selected by
no policy of a direction is open in that direction; otherwise some rule of a selecting policy must match both
peer and port, at the sender's egress and the receiver's ingress). e2e/test_kind.py checks the same on a cluster
that enforces them.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest

from hybridorch.api import render
from hybridorch.errors import SpecError
from hybridorch.core.labels import LABEL_STACK, LABEL_TENANT, LABEL_WORKLOAD

STACK = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {name: t}
spec:
  workloads:
    - name: front
      image: hybridorch.local/httpd:1
      tenant: shop
      ports: [{port: 80, allowFrom: [pay]}, {port: 81, public: true}, 82]
    - name: cart
      image: hybridorch.local/httpd:1
      tenant: shop
      ports: [83]
    - name: ledger
      image: hybridorch.local/httpd:1
      tenant: pay
      ports: [90]
      allowFrom: [audit]
    - name: auditor
      image: hybridorch.local/httpd:1
      tenant: audit
"""

Pod = tuple[str, dict[str, str]]   # (namespace, pod labels)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector   # the templates use matchLabels only
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


class Cluster:
    """The rendered policies plus namespaces: the stack's (labelled as rendered) and any others named."""

    def __init__(self, docs: list[dict[str, Any]], extra_namespaces: dict[str, dict[str, str]]) -> None:
        self.policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        self.ns_labels = {d["metadata"]["name"]: dict(d["metadata"]["labels"]) for d in docs
                          if d["kind"] == "Namespace"}
        self.ns_labels.update(extra_namespaces)
        for name, labels in self.ns_labels.items():
            labels["kubernetes.io/metadata.name"] = name   # set by the API server on every namespace

    def _peer(self, peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
        ns, labels = pod
        if "namespaceSelector" in peer:
            if not _selects(peer["namespaceSelector"], self.ns_labels[ns]):
                return False
        elif ns != policy_ns:
            return False
        return _selects(peer.get("podSelector") or {}, labels)

    def _open(self, direction: str, at: Pod, other: Pod, port: int, protocol: str) -> bool:
        key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        selecting = [p for p in self.policies if p["metadata"]["namespace"] == at[0]
                     and direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], at[1])]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy["spec"].get(key) or []:
                ports = rule.get("ports")
                port_ok = ports is None or any(p["port"] == port and p.get("protocol", "TCP") == protocol
                                               for p in ports)
                peer_ok = peers not in rule or any(self._peer(x, at[0], other) for x in rule[peers])
                if port_ok and peer_ok:
                    return True
        return False

    def connects(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        return self._open("Egress", src, dst, port, protocol) and self._open("Ingress", dst, src, port, protocol)


def pod(namespace: str, workload: str | None = None) -> Pod:
    labels = {"run": "client"} if workload is None else {
        "app.kubernetes.io/managed-by": "hybridorch", LABEL_STACK: "t", LABEL_WORKLOAD: workload}
    return namespace, labels


DNS: Pod = ("kube-system", {"k8s-app": "kube-dns"})
OTHERS = {"kube-system": {}, "elsewhere": {},
          # a namespace hybridorch did not make, wearing the labels of tenant pay: labels are not identity
          "forged": {"app.kubernetes.io/managed-by": "hybridorch", LABEL_STACK: "t", LABEL_TENANT: "pay"}}

CASES = [
    # (source, destination, port, protocol, allowed, why)
    (pod("shop", "cart"), pod("shop", "front"), 82, "TCP", True, "own tenant reaches a declared port"),
    (pod("shop", "front"), pod("shop", "cart"), 83, "TCP", True, "own tenant, the other way"),
    (pod("shop", "cart"), pod("shop", "front"), 8080, "TCP", False, "own tenant, an undeclared port"),
    (pod("pay", "ledger"), pod("shop", "front"), 82, "TCP", False, "another tenant: denied"),
    (pod("pay", "ledger"), pod("shop", "front"), 80, "TCP", True, "another tenant named in the port's allowFrom"),
    (pod("pay", "ledger"), pod("shop", "cart"), 83, "TCP", False, "allowFrom opens that workload only"),
    (pod("audit", "auditor"), pod("shop", "front"), 80, "TCP", False, "a tenant allowFrom does not name"),
    (pod("audit", "auditor"), pod("pay", "ledger"), 90, "TCP", True, "the workload-wide allowFrom"),
    (pod("shop", "front"), pod("pay", "ledger"), 90, "TCP", False, "allowFrom is one way"),
    (pod("pay", "ledger"), pod("shop", "front"), 81, "TCP", True, "public: another tenant"),
    (pod("elsewhere"), pod("shop", "front"), 81, "TCP", True, "public: a namespace hybridorch did not make"),
    (pod("elsewhere"), pod("shop", "front"), 82, "TCP", False, "a foreign namespace: denied"),
    (pod("elsewhere"), pod("pay", "ledger"), 90, "TCP", False, "a foreign namespace: denied"),
    (pod("forged"), pod("shop", "front"), 80, "TCP", False, "tenant labels on a foreign namespace do not count"),
    (pod("shop", "front"), pod("elsewhere"), 80, "TCP", False, "no egress out of the stack's tenants"),
    (pod("shop", "front"), DNS, 53, "UDP", True, "DNS"),
    (pod("pay", "ledger"), DNS, 53, "TCP", True, "DNS over TCP"),
    (pod("shop", "front"), ("kube-system", {"component": "kube-apiserver"}), 53, "UDP", False, "only kube-dns"),
]


@pytest.fixture(params=["", "dev-"], ids=["no-prefix", "prefix"])
def cluster(request: pytest.FixtureRequest, write_stack: Callable[[str], str]) -> tuple[Cluster, str]:
    prefix = request.param
    docs = list(render(write_stack(STACK), namespace_prefix=prefix).documents)
    return Cluster(docs, {**OTHERS}), prefix


@pytest.mark.parametrize("src,dst,port,protocol,allowed,why", CASES, ids=[c[-1] for c in CASES])
def test_who_may_connect(cluster: tuple[Cluster, str], src: Pod, dst: Pod, port: int, protocol: str,
                         allowed: bool, why: str):
    net, prefix = cluster

    def where(p: Pod) -> Pod:
        return (prefix + p[0], p[1]) if p[0] in ("shop", "pay", "audit") else p

    assert net.connects(where(src), where(dst), port, protocol) is allowed, why


def test_allow_from_names_tenants_of_the_stack(write_stack: Callable[[str], str]):
    path = write_stack(STACK.replace("allowFrom: [audit]", "allowFrom: [audit, payments]"))
    with pytest.raises(SpecError) as err:
        render(path)
    assert err.value.lines() == [f"{path}:18: spec.workloads[2].allowFrom[1]: not a tenant of this stack (a "
                                 "workload's tenant, or the stack's name where a workload sets none)"]
