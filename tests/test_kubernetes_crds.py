"""Fast checks of e2e/k8s/kubevirt_crds.py: the KubeVirt schema the package ships turned into structural CRD schemas.

The e2e cluster proves the API server accepts them; these check the structural rules on every node.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("kubevirt_crds", ROOT / "e2e" / "k8s" / "kubevirt_crds.py")
assert spec and spec.loader
kubevirt_crds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kubevirt_crds)


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    # the schema inside the package, so a fresh clone (nothing beside it) has everything the e2e cluster needs
    assert kubevirt_crds.SHIPPED == ROOT / "hybridorch" / "data" / "kubevirt-schema.json"
    items = kubevirt_crds.convert(json.loads(kubevirt_crds.SHIPPED.read_text()))["items"]
    return {c["metadata"]["name"]: c for c in items}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from nodes(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def test_the_virtualmachine_crd_is_there_with_status_subresource(crds: dict[str, dict[str, Any]]) -> None:
    vm = crds["virtualmachines.kubevirt.io"]["spec"]
    assert vm["names"]["kind"] == "VirtualMachine" and vm["scope"] == "Namespaced"
    version = vm["versions"][0]
    assert version["name"] == "v1" and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["properties"]["metadata"] == {"type": "object"}
    template = schema["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    assert template["properties"]["domain"]["properties"]["cpu"]["properties"]["cores"]["type"] == "integer"
    assert "datavolumes.cdi.kubevirt.io" in crds


def test_every_node_is_structural(crds: dict[str, dict[str, Any]]) -> None:
    for name, crd in crds.items():
        for path, node in nodes(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            assert "$ref" not in node and "default" not in node and "description" not in node, (name, path)
            assert "type" in node or node.get("x-kubernetes-int-or-string"), (name, path, node)
            if node.get("x-kubernetes-list-type") == "map":
                required = node["items"].get("required", [])
                assert all(k in required for k in node["x-kubernetes-list-map-keys"]), (name, path)


def test_json_schema_type_lists_become_structural_types() -> None:
    conv = kubevirt_crds.Converter({})
    assert conv.schema({"type": ["string", "null"]}) == {"type": "string", "nullable": True}
    assert conv.schema({"type": ["string", "integer"]}) == {"x-kubernetes-int-or-string": True}
    # additionalProperties: false is strictness for render's validator; a CRD prunes unknown fields instead
    assert conv.schema({"type": "object", "additionalProperties": False, "properties": {"a": {"type": "integer"}}}) \
        == {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_the_cluster_scripts_name_no_path_outside_the_repository() -> None:
    for path in (ROOT / "e2e" / "k8s").iterdir():
        if path.suffix in (".py", ".sh"):
            text = path.read_text()
            assert not any(s in text for s in ('"shared"', "../shared", "/work/", "parent.parent.parent")), path
