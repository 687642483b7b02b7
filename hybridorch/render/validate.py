"""Offline checks of rendered output: Kubernetes 1.34 and KubeVirt objects against their OpenAPI schemas, libvirt
domain XML with virt-xml-validate and cloud-init user data with `cloud-init schema`, when those tools exist.

The schemas are the subsets in hybridorch/data/ extracted by tests/tools/extract_schemas.py (see that script for
their sources and versions); validation never touches the network.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Sequence

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


# --- the external checkers, many texts at a time -------------------------------------------------------------
# A checker's verdict on a text is kept by the SHA-256 of that exact text: the same domain or user data seen again
# (both renderings of `audit`, replicas with one user data, a second render) is not checked again. Many texts are
# checked in one run where the tool takes several files; one run only says which are valid: any other is checked
# again alone by the tool itself, so every complaint reads as before and a batch can never pass what the tool fails.

_VERDICTS: dict[tuple[str, bytes], str | None] = {}
_MAX_VERDICTS = 200_000   # ~100 bytes each
BATCH_FILES = 500         # files per run: far below any argv limit with names of ~25 characters


def _checked(checker: str, texts: Sequence[str], check: Callable[[list[str]], list[str | None]]
             ) -> list[str | None]:
    """Each text's verdict: from _VERDICTS, else from one `check` of every distinct text not seen before."""
    keys = [(checker, hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()) for t in texts]
    known = {k: _VERDICTS[k] for k in keys if k in _VERDICTS}
    todo = {k: t for k, t in zip(keys, texts) if k not in known}
    if todo:
        known.update(zip(todo, check(list(todo.values()))))
        if len(_VERDICTS) + len(todo) > _MAX_VERDICTS:
            _VERDICTS.clear()
        _VERDICTS.update((k, known[k]) for k in todo)
    return [known[k] for k in keys]


def _valid_in_one_run(argv: Callable[[list[str]], list[str]], texts: list[str], suffix: str,
                      valid_line: Callable[[str], str]) -> set[int]:
    """The indexes of the texts one run of a checker over all their files says are valid (in chunks of
    BATCH_FILES). Files are named with a random token, so nothing a text makes the tool echo can pass for another
    file's verdict line."""
    token = secrets.token_hex(8)
    valid: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="hybridorch-check-") as folder:
        names = [f"{token}-{i}{suffix}" for i in range(len(texts))]
        for name, text in zip(names, texts):
            with open(os.path.join(folder, name), "w") as fh:
                fh.write(text)
        for first in range(0, len(names), BATCH_FILES):
            chunk = names[first:first + BATCH_FILES]
            args = argv(chunk)
            done = proc.run(args, what=f"validating with {os.path.basename(args[0])}", timeout=60 + len(chunk),
                            check=False, error=RenderError, cwd=folder)
            said = set((done.stdout + "\n" + done.stderr).splitlines())
            valid.update(first + i for i, name in enumerate(chunk) if valid_line(name) in said)
    return valid


def _each_alone_unless_valid(texts: list[str], valid: set[int], alone: Callable[[str], str | None]
                             ) -> list[str | None]:
    return [None if i in valid else alone(t) for i, t in enumerate(texts)]


def libvirt_available() -> bool:
    # virt-xml-validate is a shell script around xmllint (libxml2-utils)
    return shutil.which("virt-xml-validate") is not None and shutil.which("xmllint") is not None


@lru_cache(maxsize=1)
def _domain_schema() -> str | None:
    """libvirt's domain.rng where virt-xml-validate finds it (the script runs `xmllint --relaxng $SCHEMA`, SCHEMA
    being DIR/${TYPE}.rng); None when the script does not say so (then each file goes through the script)."""
    script = shutil.which("virt-xml-validate")
    try:
        with open(script or "", "rb") as fh:
            text = fh.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return None
    found = re.search(r'^\s*SCHEMA="([^"$`]+)/\$\{?TYPE\}?\.rng"', text, re.M)
    schema = os.path.join(found.group(1), "domain.rng") if found else ""
    return schema if os.path.isfile(schema) else None


def _libvirt_alone(xml: str) -> str | None:
    return _run_checker(lambda p: ["virt-xml-validate", p, "domain"], xml, ".xml")


def _libvirt_many(xmls: list[str]) -> list[str | None]:
    schema = _domain_schema()
    if len(xmls) == 1 or schema is None:
        return [_libvirt_alone(x) for x in xmls]
    # what virt-xml-validate runs for each file, once for all of them: xmllint says "<file> validates" per file
    valid = _valid_in_one_run(lambda names: ["xmllint", "--noout", "--relaxng", schema, *names], xmls, ".xml",
                              lambda name: f"{name} validates")
    return _each_alone_unless_valid(xmls, valid, _libvirt_alone)


def libvirt_problems(xmls: Sequence[str]) -> list[str | None]:
    """virt-xml-validate's complaint about each domain XML (None when valid or when the tool is missing), the
    valid ones found by one xmllint run over all of them."""
    if not libvirt_available():
        return [None] * len(xmls)
    return _checked("libvirt", xmls, _libvirt_many)


def libvirt_problem(xml: str) -> str | None:
    """virt-xml-validate's complaint about a domain XML (None when valid or when the tool is missing)."""
    return libvirt_problems([xml])[0]


def cloud_init_available() -> bool:
    return shutil.which("cloud-init") is not None


# `cloud-init schema --config-file F` for each file named, in one interpreter: prints "<file> valid" for each one
# its own command-line handler passed without complaint (nothing on stderr, no error exit)
_CLOUD_INIT_MANY = """
import contextlib, io, sys
from cloudinit.config import schema
for name in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            failed = schema.handle_schema_args("schema", schema.get_parser().parse_args(["--config-file", name]))
    except BaseException as exc:
        failed = not isinstance(exc, SystemExit) or exc.code not in (None, 0)
    if not failed and not err.getvalue():
        print(name, "valid", flush=True)
"""


@lru_cache(maxsize=1)
def _cloud_init_python() -> str | None:
    """The interpreter the cloud-init command runs on (its #! line), which can import its schema module."""
    script = shutil.which("cloud-init")
    try:
        with open(script or "", "rb") as fh:
            first = fh.readline(256).decode("utf-8", "replace").strip()
    except OSError:
        return None
    found = re.fullmatch(r"#!\s*(/\S*python[0-9.]*)(\s+-[sEI]+)?", first)
    return found.group(1) if found and os.access(found.group(1), os.X_OK) else None


def _cloud_init_alone(user_data: str) -> str | None:
    return _run_checker(lambda p: ["cloud-init", "schema", "--config-file", p], user_data, ".yaml")


def _cloud_init_many(texts: list[str]) -> list[str | None]:
    python = _cloud_init_python()
    if len(texts) == 1 or python is None:
        return [_cloud_init_alone(t) for t in texts]
    valid = _valid_in_one_run(lambda names: [python, "-c", _CLOUD_INIT_MANY, *names], texts, ".yaml",
                              lambda name: f"{name} valid")
    return _each_alone_unless_valid(texts, valid, _cloud_init_alone)


def cloud_init_problems(user_data: Sequence[str]) -> list[str | None]:
    """`cloud-init schema`'s complaint about each #cloud-config user data (None when valid or the tool is
    missing), the valid ones found by one run of cloud-init's own schema handler over all of them."""
    if not cloud_init_available():
        return [None] * len(user_data)
    return _checked("cloud-init", user_data, _cloud_init_many)


def cloud_init_problem(user_data: str) -> str | None:
    """`cloud-init schema`'s complaint about #cloud-config user data (None when valid or the tool is missing)."""
    return cloud_init_problems([user_data])[0]
