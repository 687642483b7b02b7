"""Property: whatever file `hybridorch audit` is given, it answers with exit 0, 1 or 2 and one-line errors, never a
traceback.

Inputs come from Hypothesis: Kubernetes/KubeVirt objects generated from the audit's own declared shapes
(ops/foreign.py), each field either of its type or of a wrong one; libvirt domain XML generated from the elements
the rules read; and byte mutations of valid manifests, domains and cloud-config. Derandomized with fixed example
counts so CI runs the same cases (~30 s).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from hybridorch.cli import cli
from hybridorch.ops import foreign
from tests.test_fuzz import fixed, mutate   # one derandomized profile and one byte mutator for every fuzz test

ERROR_LINE = re.compile(r"^[^\n:]+(:\d+)?: .+$")


def check_audit(path: Path) -> int:
    result = CliRunner().invoke(cli, ["audit", "--fail-on", "low", str(path)], catch_exceptions=False)
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert lines and all(ERROR_LINE.match(ln) for ln in lines), lines
    return result.exit_code


# --- objects from the declared shapes -------------------------------------------------------------------

WRONG = st.one_of(st.text(max_size=6), st.integers(-2**70, 2**70), st.booleans(), st.none(),
                  st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(0, 9), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2), st.datetimes(),
                  st.just("9" * 5000), st.just("1.2.3"))
QUANTITIES = st.sampled_from(["500m", "2", "1.5", "1Gi", "64Mi", "2k", "1e3", "0.001", 4, 1.5])


def of_shape(shape: foreign.Shape) -> st.SearchStrategy[Any]:
    """A value of the shape (mostly) or of a wrong type (sometimes, so that most objects reach the rules)."""
    right = _right(shape)
    return st.integers(0, 15).flatmap(lambda i: WRONG if i == 7 else right)


def _right(shape: foreign.Shape) -> st.SearchStrategy[Any]:
    if isinstance(shape, foreign.Obj):
        return st.fixed_dictionaries({}, optional={k: st.deferred(lambda v=v: of_shape(v))
                                                   for k, v in shape.fields.items()})
    if isinstance(shape, foreign.ListOf):
        return st.lists(st.deferred(lambda: of_shape(shape.item)), max_size=3)
    if isinstance(shape, foreign.MapOf):
        return st.dictionaries(st.sampled_from(["app", "hybridorch.dev/ttl", "hybridorch.dev/owner",
                                                "hybridorch.dev/runtime", "hybridorch.dev/workload"]),
                               st.deferred(lambda: of_shape(shape.value)), max_size=3)
    if isinstance(shape, foreign.Whole):
        return st.integers(shape.low - 1, shape.high + 1) | st.sampled_from([22, 3389, 5901, 8080])
    if isinstance(shape, foreign.Quantity):
        return QUANTITIES
    if isinstance(shape, foreign.Flag):
        return st.booleans()
    if isinstance(shape, foreign.Time):
        return st.datetimes() | st.sampled_from(["2020-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "yesterday"])
    if isinstance(shape, foreign.PortOrName):
        return st.integers(0, 65535) | st.text(max_size=6)
    if isinstance(shape, foreign.Either):
        return _right(shape.single) | _right(shape.many)
    if isinstance(shape, foreign.Keys):
        return st.none() | st.dictionaries(st.sampled_from(["qemuGuestAgent", "matchLabels"]), st.just({}),
                                           max_size=2) | st.lists(st.just({}), max_size=2)
    return st.text(max_size=8) | st.sampled_from(["1h", "30d", "sandboxed", "ssh", "0"])


def k8s_object() -> st.SearchStrategy[dict[str, Any]]:
    def build(kind: str) -> st.SearchStrategy[dict[str, Any]]:
        spec = foreign.SPEC_OF_KIND.get(kind)
        fields = {"apiVersion": st.sampled_from(["v1", "apps/v1", "kubevirt.io/v1", "hybridorch.dev/v1alpha1"]),
                  "kind": st.integers(0, 15).flatmap(lambda i: WRONG if i == 7 else st.just(kind)),
                  "metadata": of_shape(foreign.META)}
        if spec is not None:
            fields["spec"] = of_shape(spec)
        return st.fixed_dictionaries(fields)
    kinds = st.sampled_from([*foreign.SPEC_OF_KIND, "Namespace", "ConfigMap", "Stack"])
    return kinds.flatmap(build)


def k8s_stream() -> st.SearchStrategy[list[Any]]:
    items = st.lists(k8s_object(), min_size=1, max_size=3)
    listed = items.map(lambda xs: {"apiVersion": "v1", "kind": "List", "items": xs})
    return st.lists(k8s_object() | listed, min_size=1, max_size=3)


@fixed(300)
@given(docs=k8s_stream())
def test_objects_generated_from_the_declared_shapes(tmp_path_factory: pytest.TempPathFactory,
                                                     docs: list[Any]) -> None:
    path = tmp_path_factory.mktemp("k") / "objects.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    check_audit(path)


# --- domain XML from the elements the rules read -------------------------------------------------------

TEXTS = st.sampled_from(["2", "4", "64", "9" * 5000, "²", "-1", " 8 ", "many", "", "&amp;", "<![CDATA[3]]>"])
ATTRS = st.dictionaries(st.sampled_from(["type", "dir", "file", "socket", "name", "listen", "address", "value",
                                         "key"]),
                        st.sampled_from(["spicevmc", "network", "0.0.0.0", "127.0.0.1", "/var/run/docker.sock",
                                         "org.qemu.guest_agent.0", "hybridorch.dev/ttl", "vfio-pci,host=1",
                                         "user,hostfwd=tcp::2222-:22", "user,hostfwd=tcp::" + "9" * 30 + "-:22",
                                         "local,path=/"]), max_size=3)
TAGS = ["name", "vcpu", "memory", "devices", "filesystem", "driver", "source", "channel", "target", "hostdev",
        "graphics", "listen", "qemu:commandline", "qemu:arg", "metadata", "hyb:label"]


def element(depth: int) -> st.SearchStrategy[str]:
    children = st.lists(element(depth - 1), max_size=3) if depth else st.just([])
    return st.builds(lambda tag, attrs, text, kids: f"<{tag}" + "".join(f" {k}={quoteattr(v)}" for k, v in
                                                                        attrs.items())
                     + f">{escape(text) if not text.startswith('<!') else text}{''.join(kids)}</{tag}>",
                     st.sampled_from(TAGS), ATTRS, TEXTS, children)


@fixed(200)
@given(root=st.sampled_from(["domain", "domain", "notadomain"]), body=st.lists(element(3), max_size=5))
def test_domains_generated_from_the_elements_the_rules_read(tmp_path_factory: pytest.TempPathFactory, root: str,
                                                            body: list[str]) -> None:
    path = tmp_path_factory.mktemp("d") / "domain.xml"
    path.write_text(f"<{root} xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' xmlns:hyb='h'>"
                    + "".join(body) + f"</{root}>")
    check_audit(path)


# --- byte mutations of valid inputs --------------------------------------------------------------------

MANIFEST = b"""apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: shop, labels: {hybridorch.dev/ttl: 1h}, creationTimestamp: 2020-01-01T00:00:00Z}
  spec:
    template:
      metadata: {labels: {hybridorch.dev/runtime: sandboxed}}
      spec:
        hostNetwork: true
        volumes: [{name: s, hostPath: {path: /var/run/docker.sock}}]
        containers:
        - name: c
          securityContext: {privileged: true, capabilities: {add: [NET_ADMIN]}}
          ports: [{containerPort: 22, hostPort: 2222}]
          resources: {limits: {cpu: 500m, memory: 64Mi}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm}
spec:
  template:
    spec:
      domain: {cpu: {cores: 8}, devices: {filesystems: [{name: f}], gpus: [{deviceName: g}]}}
"""
DOMAIN = b"""<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm</name><vcpu>8</vcpu><memory unit='MiB'>512</memory>
  <devices>
    <filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/></filesystem>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' listen='0.0.0.0'/>
  </devices>
  <qemu:commandline><qemu:arg value='user,hostfwd=tcp::2222-:22'/></qemu:commandline>
</domain>
"""
CLOUD_CONFIG = b"#cloud-config\npackages: [qemu-guest-agent, [spice-vdagent, '1.0']]\nmounts: [[srv, /srv, 9p]]\n"
SOURCES = {"manifest.yaml": MANIFEST, "domain.xml": DOMAIN, "user-data": CLOUD_CONFIG}


def mutations() -> st.SearchStrategy[list[tuple[int, int, bytes]]]:
    """Edits (kind, position, bytes): 0 replace, 1 insert, 2 delete; bytes favour YAML/XML syntax and encodings."""
    interesting = st.sampled_from([b":", b"-", b"[", b"{", b"&a", b"*a", b"!!int ", b"\n", b" ", b"'", b'"', b"#",
                                   b"\x00", b"\xff", b"\xef\xbb\xbf", b"1e400", b"9" * 30, b"---\n", b"\t", b"<",
                                   b">", b"&amp;", b"&#9999999;", b"<!DOCTYPE d [<!ENTITY e 'x'>]>", b"<<: *a",
                                   b"kind: List\nitems: ", b"\x1b[31m"])
    return st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), interesting | st.binary(min_size=1,
                                                                                                 max_size=3)),
                    min_size=1, max_size=6)


@fixed(400)
@given(name=st.sampled_from(sorted(SOURCES)), edits=mutations())
def test_mutated_manifests_domains_and_cloud_config(tmp_path_factory: pytest.TempPathFactory, name: str,
                                                    edits: list[tuple[int, int, bytes]]) -> None:
    path = tmp_path_factory.mktemp("m") / name
    path.write_bytes(mutate(SOURCES[name], edits))
    check_audit(path)


def test_the_unmutated_sources_are_audited_with_findings(tmp_path: Path) -> None:
    # the mutation tests start from inputs that do reach the rules
    for name, data in SOURCES.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert check_audit(path) == 1, name
