"""Turn the KubeVirt JSON Schema the package ships (hybridorch/data/kubevirt-schema.json, extracted from KubeVirt's
OpenAPI by tests/tools/extract_schemas.py) into CustomResourceDefinitions with structural schemas.

Installed into the e2e cluster so that the API server itself validates VirtualMachines the way a cluster
running KubeVirt would (minus KubeVirt's webhooks). Usage: python3 kubevirt_crds.py [SCHEMA.json] > crds.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# formats the apiextensions validator knows; others are dropped rather than risk a rejected CRD
KNOWN_FORMATS = {"int32", "int64", "float", "double", "byte", "binary", "date", "date-time", "password",
                 "uuid", "duration", "email", "hostname", "ipv4", "ipv6", "uri"}
INT_OR_STRING = {"x-kubernetes-int-or-string": True}
PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
OBJECT_META = "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# these wire types have special JSON forms the OpenAPI types cannot express structurally
SPECIAL: dict[str, dict[str, Any]] = {
    "k8s.io.apimachinery.pkg.api.resource.Quantity": INT_OR_STRING,
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
    "k8s.io.apimachinery.pkg.runtime.RawExtension": PRESERVE,
    "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1": PRESERVE,
    # embedded metadata (templates): like KubeVirt's own CRDs, accept it unpruned; nullable because
    # generated manifests often carry creationTimestamp: null
    OBJECT_META: {"type": "object", "nullable": True, "x-kubernetes-preserve-unknown-fields": True},
}
# the KubeVirt API subset the package ships (and validates rendered VirtualMachines against)
SHIPPED = Path(__file__).resolve().parents[2] / "hybridorch" / "data" / "kubevirt-schema.json"


class Converter:
    def __init__(self, definitions: dict[str, Any]):
        self.definitions = definitions

    def schema(self, node: dict[str, Any], stack: tuple[str, ...] = ()) -> dict[str, Any]:
        """One JSON Schema node as a structural schema node (refs inlined, every node typed)."""
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in SPECIAL:
                return dict(SPECIAL[name])
            if name in stack:  # a recursive type cannot be inlined: accept anything below this point
                return dict(PRESERVE)
            inlined = self.schema(self.definitions[name], stack + (name,))
            if node.get("nullable"):
                inlined["nullable"] = True
            return inlined
        kind = node.get("type")
        out: dict[str, Any] = {}
        if isinstance(kind, list):
            # JSON Schema says nullable as a "null" member and int-or-string as ["string", "integer", ...]
            types = [t for t in kind if t != "null"]
            if len(types) != 1:
                return dict(INT_OR_STRING) if "string" in types else dict(PRESERVE)
            return self.schema({**node, "type": types[0], "nullable": node.get("nullable") or "null" in kind}, stack)
        if kind == "object" or "properties" in node or "additionalProperties" in node:
            out["type"] = "object"
            props = node.get("properties") or {}
            if props:
                out["properties"] = {k: self.schema(v, stack) for k, v in props.items()}
                required = [r for r in node.get("required", []) if r in props]
                if required:
                    out["required"] = required
            extra = node.get("additionalProperties")
            if isinstance(extra, dict) and not props:
                out["additionalProperties"] = self.schema(extra, stack)
            elif not props and extra is None and not node.get("x-kubernetes-map-type"):
                # an open object in Go (map[string]interface{} and friends)
                out["x-kubernetes-preserve-unknown-fields"] = True
            if node.get("x-kubernetes-map-type") in ("atomic", "granular"):
                out["x-kubernetes-map-type"] = node["x-kubernetes-map-type"]
        elif kind == "array":
            out["type"] = "array"
            out["items"] = self.schema(node.get("items") or {}, stack)
            list_type = node.get("x-kubernetes-list-type")
            if list_type == "map":
                keys = node.get("x-kubernetes-list-map-keys") or []
                # map keys must be required (we drop defaults), otherwise the list is kept atomic
                if keys and all(k in out["items"].get("required", []) for k in keys):
                    out["x-kubernetes-list-type"] = "map"
                    out["x-kubernetes-list-map-keys"] = keys
                else:
                    out["x-kubernetes-list-type"] = "atomic"
            elif list_type == "set":
                scalar = out["items"].get("type") in ("string", "integer", "number", "boolean")
                out["x-kubernetes-list-type"] = "set" if scalar else "atomic"
            elif list_type == "atomic":
                out["x-kubernetes-list-type"] = "atomic"
        elif kind in ("string", "integer", "number", "boolean"):
            out["type"] = kind
            if node.get("format") in KNOWN_FORMATS:
                out["format"] = node["format"]
            if "enum" in node:
                out["enum"] = list(node["enum"])
        else:  # untyped: anything goes
            return dict(PRESERVE)
        if node.get("nullable"):
            out["nullable"] = True
        return out

    def root(self, definition: str) -> dict[str, Any]:
        """The schema of a top-level resource: metadata is the API server's own, the rest converted."""
        node = self.definitions[definition]
        props = dict(node.get("properties") or {})
        props.pop("metadata", None)
        out = self.schema({**node, "properties": props}, (definition,))
        out["properties"]["metadata"] = {"type": "object"}
        return out


def resources(schema: dict[str, Any]) -> list[dict[str, str]]:
    """Every resource the schema names in `kinds` ("group/version/Kind" -> definition), as group, version,
    plural, kind, definition and scope; every KubeVirt kind hybridorch renders is namespaced."""
    found = []
    for gvk, definition in schema["kinds"].items():
        group_version, kind = gvk.rsplit("/", 1)
        group, _, version = group_version.rpartition("/")
        found.append({"group": group, "version": version, "plural": kind.lower(), "kind": kind,
                      "definition": definition, "scope": "Namespaced"})
    return sorted(found, key=lambda r: (r["group"], r["plural"]))


def crd(conv: Converter, res: dict[str, str], short_names: dict[str, list[str]]) -> dict[str, Any]:
    plural = res["plural"] if res["plural"].endswith("s") else res["plural"] + "s"
    names: dict[str, Any] = {"plural": plural, "singular": res["kind"].lower(), "kind": res["kind"],
                             "listKind": res["kind"] + "List"}
    if res["kind"] in short_names:
        names["shortNames"] = short_names[res["kind"]]
    schema = conv.root(res["definition"])
    version: dict[str, Any] = {"name": res["version"], "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": schema}}
    if "status" in schema.get("properties", {}):
        version["subresources"] = {"status": {}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{res['group']}",
                         "labels": {"app.kubernetes.io/part-of": "kubevirt-crds-from-schema"}},
            "spec": {"group": res["group"], "scope": res["scope"], "names": names, "versions": [version]}}


def convert(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRDs (a kubectl List) for the KubeVirt JSON Schema hybridorch ships in hybridorch/data/."""
    conv = Converter(schema["$defs"])
    short = {"VirtualMachine": ["vm", "vms"], "VirtualMachineInstance": ["vmi", "vmis"],
             "DataVolume": ["dv", "dvs"]}
    items = [crd(conv, r, short) for r in resources(schema)]
    # CDI's DataVolume is not in KubeVirt's API, but KubeVirt embeds its spec (dataVolumeTemplates):
    # a standalone DataVolume gets the same schema, so a stack with a disk size validates either way.
    if "v1.DataVolumeTemplateSpec" in conv.definitions:
        items.append(crd(conv, {"group": "cdi.kubevirt.io", "version": "v1beta1", "plural": "datavolumes",
                                "kind": "DataVolume", "definition": "v1.DataVolumeTemplateSpec",
                                "scope": "Namespaced"}, short))
    return {"apiVersion": "v1", "kind": "List", "items": items}


def main(argv: list[str]) -> int:
    if len(argv) > 2 or argv[1:2] in (["-h"], ["--help"]):
        print(f"usage: kubevirt_crds.py [KUBEVIRT-SCHEMA.json] > crds.json (default: {SHIPPED})", file=sys.stderr)
        return 2
    with open(argv[1] if len(argv) == 2 else SHIPPED, encoding="utf-8") as fh:
        schema = json.load(fh)
    json.dump(convert(schema), sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
