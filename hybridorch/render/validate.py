"""Offline checks of rendered output: Kubernetes 1.34 and KubeVirt objects against their OpenAPI schemas, libvirt
domain XML with virt-xml-validate and cloud-init user data with `cloud-init schema`, when those tools exist.

The schemas are the subsets in hybridorch/data/ extracted by tests/tools/extract_schemas.py (see that script for
their sources and versions); validation never touches the network.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from hybridorch import proc
from hybridorch.errors import RenderError
from hybridorch.render.fastyaml import Origin

KUBERNETES_VERSION = "1.34"
SCHEMA_FILES = (f"kubernetes-{KUBERNETES_VERSION}-schema.json", "kubevirt-schema.json")


@lru_cache(maxsize=None)
def _validators() -> dict[str, Draft202012Validator]:
    """apiVersion/kind -> a validator of that kind's definition."""
    out: dict[str, Draft202012Validator] = {}
    for name in SCHEMA_FILES:
        doc = json.loads(resources.files("hybridorch.data").joinpath(name).read_text())
        uri = f"urn:hybridorch:{name}"
        registry: Registry = Registry().with_resource(uri, DRAFT202012.create_resource(doc))
        for kind, definition in doc["kinds"].items():
            out[kind] = Draft202012Validator({"$ref": f"{uri}#/$defs/{definition}"}, registry=registry)
    return out


def known_kinds() -> list[str]:
    return sorted(_validators())


@lru_cache(maxsize=None)
def _enum_values() -> frozenset[Any]:
    """Every value an `enum` of the schemas names: the only values the schemas check beyond their type."""
    found: set[Any] = set()
    todo: list[Any] = []
    for name in SCHEMA_FILES:
        todo.append(json.loads(resources.files("hybridorch.data").joinpath(name).read_text()))
    while todo:
        x = todo.pop()
        if isinstance(x, dict):
            found.update(v for v in x.get("enum", ()) if isinstance(v, (str, int, float, bool)))
            todo.extend(x.values())
        elif isinstance(x, list):
            todo.extend(x)
    return frozenset(found)


def _shape(obj: Any) -> Any:
    """What the schemas can tell apart in an object: its keys, list lengths, types, and the values that are some
    enum's member; every other value is only its type. The schemas check types, required and allowed keys and
    enums (tests/test_render.py keeps them so), so two objects of one shape are both valid or both invalid."""
    return _shape_of(obj, _enum_values())


def _shape_of(obj: Any, enums: frozenset[Any]) -> Any:
    kind = type(obj)
    if kind is dict:
        return ("map", tuple([(k, _shape_of(v, enums)) for k, v in obj.items()]))
    if kind is list:
        return ("list", tuple([_shape_of(v, enums) for v in obj]))
    if kind is str or kind is int or kind is bool or kind is float:
        # a bool is never taken for the int enum member 1 (True == 1): the type stays part of the shape
        return (kind.__name__, obj) if obj in enums else kind.__name__
    if isinstance(obj, dict):
        return ("map", tuple([(k, _shape_of(v, enums)) for k, v in obj.items()]))
    if isinstance(obj, list):
        return ("list", tuple([_shape_of(v, enums) for v in obj]))
    return kind.__name__


_VALID: set[Any] = set()   # shapes already found valid: an object of one of them needs no schema walk
_MAX_SHAPES = 100_000


@lru_cache(maxsize=None)
def _enum_tokens() -> frozenset[str]:
    """The enum values as the JSON tokens a template's output spells them (fastyaml's cut tokens): a string
    JSON-quoted as the `yaml` filter writes it, an integer (or a boolean's equal) in digits."""
    out = set()
    for v in _enum_values():
        if isinstance(v, str):
            out.add(json.dumps(v, ensure_ascii=True))
        elif isinstance(v, int):   # True == 1: the int token 1 is an enum member when True is one
            out.add(str(int(v)))
    return frozenset(out)


def _origin_shape(origin: Origin) -> Any:
    """The shape of a document read through a skeleton: the skeleton fixes everything but the cut tokens, so a
    token that is a mapping key, may be an enum member or carries an escape stays whole, any other only says
    string or integer. Two documents with one such shape have one _shape (finer never merges what differs)."""
    enums, keys = _enum_tokens(), origin.skeleton.keys
    kinds = [t if (i in keys or t in enums or "\\" in t) else t[0] == '"' for i, t in enumerate(origin.tokens)]
    return (origin.skeleton, origin.index, tuple(kinds))


def object_problems(obj: dict[str, Any], origin: Origin | None = None) -> list[str]:
    """Every schema violation of one object, as 'path: message' lines (empty when valid). `origin`, when the
    object was read through a skeleton, stands for its shape."""
    key = f"{obj.get('apiVersion')}/{obj.get('kind')}"
    validator = _validators().get(key)
    if validator is None:
        return [f"no schema for {key} (known: {', '.join(known_kinds())})"]
    problems = []
    shape = (key, _origin_shape(origin) if origin is not None else _shape(obj))
    if shape not in _VALID:
        for err in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
            path = ".".join(str(p) for p in err.absolute_path) or "(object)"
            problems.append(f"{path}: {err.message}")
        if not problems and len(_VALID) < _MAX_SHAPES:
            _VALID.add(shape)
    for field in ("name",):
        if not (obj.get("metadata") or {}).get(field):
            problems.append(f"metadata.{field}: required")
    return problems


def _run_checker(argv: Callable[[str], list[str]], text: str, suffix: str) -> str | None:
    """Run a validator on text in a temporary file; None when valid, else its complaint."""
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="hybridorch-check-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        args = argv(path)
        # a validator that hangs or vanishes fails the render, like a complaint would
        done = proc.run(args, what=f"validating with {args[0]}", timeout=60, check=False, error=RenderError)
    finally:
        os.unlink(path)
    if done.returncode == 0:
        return None
    lines = proc.lines(done.stderr + done.stdout)
    return "; ".join(ln.replace(path, "<file>") for ln in lines) or f"exit status {done.returncode}"


def libvirt_available() -> bool:
    # virt-xml-validate is a shell script around xmllint (libxml2-utils)
    return shutil.which("virt-xml-validate") is not None and shutil.which("xmllint") is not None


def cloud_init_available() -> bool:
    return shutil.which("cloud-init") is not None


@lru_cache(maxsize=256)  # the checkers take ~0.3 s each; identical text gets the same verdict
def libvirt_problem(xml: str) -> str | None:
    """virt-xml-validate's complaint about a domain XML (None when valid or when the tool is missing)."""
    if not libvirt_available():
        return None
    return _run_checker(lambda p: ["virt-xml-validate", p, "domain"], xml, ".xml")


@lru_cache(maxsize=256)
def cloud_init_problem(user_data: str) -> str | None:
    """`cloud-init schema`'s complaint about #cloud-config user data (None when valid or the tool is missing)."""
    if not cloud_init_available():
        return None
    return _run_checker(lambda p: ["cloud-init", "schema", "--config-file", p], user_data, ".yaml")
