"""Extract the few Kubernetes and KubeVirt schema definitions hybridorch renders into compact JSON in hybridorch/data/.

Run at development time only (the package never downloads anything):

    python3 tests/tools/extract_schemas.py --kubevirt kubevirt-openapi-v2.json   # pip downloads kubernetes-validate
    python3 tests/tools/extract_schemas.py --kubevirt kubevirt-openapi-v2.json --wheel kubernetes_validate-1.34.1-py3-none-any.whl

Sources:
- Kubernetes 1.34: the "v1.34.0-local-strict" JSON Schemas (draft 2020-12, additionalProperties false) shipped in the
  PyPI wheel kubernetes-validate 1.34.1, generated from the Kubernetes OpenAPI of v1.34.0.
- KubeVirt: the Swagger 2.0 definitions of a KubeVirt release, kubevirt-openapi-v2.json, given with --kubevirt (its
  sha256 is recorded in the output); made strict the same way (objects with properties reject unknown fields).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "hybridorch" / "data"
K8S_VERSION = "1.34"
K8S_WHEEL = "kubernetes-validate==1.34.1"
K8S_DIR = "kubernetes_validate/kubernetes-json-schema/v1.34.0-local-strict/_definitions.json"

# apiVersion/kind -> definition name: exactly the kinds templates/ renders
K8S_KINDS = {
    "v1/Namespace": "io.k8s.api.core.v1.Namespace",
    "v1/Service": "io.k8s.api.core.v1.Service",
    "v1/LimitRange": "io.k8s.api.core.v1.LimitRange",
    "v1/ResourceQuota": "io.k8s.api.core.v1.ResourceQuota",
    "apps/v1/Deployment": "io.k8s.api.apps.v1.Deployment",
    "apps/v1/StatefulSet": "io.k8s.api.apps.v1.StatefulSet",
    "networking.k8s.io/v1/NetworkPolicy": "io.k8s.api.networking.v1.NetworkPolicy",
    "policy/v1/PodDisruptionBudget": "io.k8s.api.policy.v1.PodDisruptionBudget",
    "node.k8s.io/v1/RuntimeClass": "io.k8s.api.node.v1.RuntimeClass",
    "batch/v1/Job": "io.k8s.api.batch.v1.Job",   # soc-test boards on a cluster
}
KUBEVIRT_KINDS = {"kubevirt.io/v1/VirtualMachine": "v1.VirtualMachine"}
# keys that do not constrain anything jsonschema checks; dropping them keeps the shipped files small
DROP = {"description", "default", "format", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key",
        "x-kubernetes-group-version-kind", "x-kubernetes-unions"}


def _clean(node: Any, strict: bool) -> Any:
    if isinstance(node, list):
        return [_clean(x, strict) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _clean(v, strict) for k, v in node.items() if k not in DROP}
    if isinstance(node.get("properties"), dict):  # property names are data, never keywords to drop
        out["properties"] = {k: _clean(v, strict) for k, v in node["properties"].items()}
    if "$ref" in out:
        out["$ref"] = "#/$defs/" + out["$ref"].rsplit("/", 1)[1]
    if strict and "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("type") == "string" and node.get("format") == "int-or-string":
        out = {"type": ["string", "integer"]}  # Swagger's int-or-string, which JSON Schema cannot say as a format
    return out


def _closure(defs: dict[str, Any], roots: list[str]) -> list[str]:
    seen: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)

        def refs(node: Any) -> None:
            if isinstance(node, dict):
                if "$ref" in node:
                    todo.append(node["$ref"].rsplit("/", 1)[1])
                for v in node.values():
                    refs(v)
            elif isinstance(node, list):
                for v in node:
                    refs(v)
        refs(defs[name])
    return sorted(seen)


def _subset(defs: dict[str, Any], kinds: dict[str, str], strict: bool, comment: str) -> dict[str, Any]:
    names = _closure(defs, list(kinds.values()))
    return {"$comment": comment, "kinds": kinds,
            "$defs": {n: _clean(defs[n], strict) for n in names}}


def _k8s_definitions(wheel: str | None) -> dict[str, Any]:
    if wheel is None:
        tmp = tempfile.mkdtemp()
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, K8S_WHEEL], check=True)
        wheel = str(next(Path(tmp).glob("*.whl")))
    with zipfile.ZipFile(wheel) as zf:
        return json.loads(zf.read(K8S_DIR))["$defs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", help="a downloaded kubernetes_validate-1.34.1 wheel (default: pip download it)")
    ap.add_argument("--kubevirt", help="KubeVirt Swagger 2.0 JSON (kubevirt-openapi-v2.json); without it the "
                                       "shipped kubevirt-schema.json is kept as it is")
    args = ap.parse_args()

    k8s = _subset(_k8s_definitions(args.wheel), K8S_KINDS, strict=False,
                  comment=f"Kubernetes {K8S_VERSION} (v1.34.0-local-strict from PyPI {K8S_WHEEL}); "
                          "regenerate with tests/tools/extract_schemas.py")
    outputs = [(f"kubernetes-{K8S_VERSION}-schema.json", k8s)]
    if args.kubevirt:
        raw = Path(args.kubevirt).read_bytes()
        kv_defs = json.loads(raw)["definitions"]
        outputs.append(("kubevirt-schema.json", _subset(
            kv_defs, KUBEVIRT_KINDS, strict=True,
            comment=f"KubeVirt API from kubevirt-openapi-v2.json sha256 {hashlib.sha256(raw).hexdigest()}"
                    "; regenerate with tests/tools/extract_schemas.py")))
    for name, doc in outputs:
        path = DATA / name
        path.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB, {len(doc['$defs'])} definitions)")


if __name__ == "__main__":
    main()
