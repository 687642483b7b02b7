"""Declarative field types for YAML inputs: validate a YAML node tree keeping line numbers, and emit JSON Schema.

The same declarations drive validation (spec.py) and the shipped JSON Schema, so the two cannot drift apart.
"""
from __future__ import annotations

import re
import types
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import yaml

from hybridorch.errors import Problem, SpecError
from hybridorch.core.safeload import MAX_INPUT_BYTES, compose_yaml, no_gc, read_input

# --- reading -------------------------------------------------------------------------------------

def read_nodes(path: str, text: str | None = None) -> yaml.Node | None:
    """Read (safely: regular file, size limit, UTF-8) and parse one YAML document into nodes, which carry line
    numbers; every problem, syntax included, is a one-line SpecError."""
    if text is None:
        text = read_input(path)
    elif len(text.encode("utf-8", "surrogatepass")) > MAX_INPUT_BYTES:
        raise SpecError([Problem(path, 0, "", f"text is larger than the {MAX_INPUT_BYTES // 2**20} MiB input limit")])
    return compose_yaml(text, path)


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


# --- quantities ----------------------------------------------------------------------------------

_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DEC = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
        "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18)}
# digits and exponent are bounded in the pattern itself, so no input makes Decimal arithmetic overflow or crawl
_QUANTITY = re.compile(r"^([+]?[0-9]{1,30}(?:\.[0-9]{0,30})?|[+]?\.[0-9]{1,30})"
                       r"(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]{1,2}))?$")
# Kubernetes stores a quantity in a signed 64-bit integer of its smallest unit (millicores, bytes)
MAX_QUANTITY_UNITS = 2**63 - 1


def parse_quantity(text: str) -> Decimal | None:
    """A Kubernetes resource quantity ('500m', '1.5', '256Mi', '1e9') as a Decimal, or None if it is not one."""
    m = _QUANTITY.match(text.strip()) if isinstance(text, str) and len(text) <= 100 else None
    if not m:
        return None
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        return None
    suffix, exponent = m.group(2), m.group(3)
    if exponent is not None:
        return number * (Decimal(10) ** int(exponent))
    if suffix in _BIN:
        return number * _BIN[suffix]
    return number * _DEC[suffix or ""]


# --- types ---------------------------------------------------------------------------------------

class Errors:
    """Collects problems while a whole file is checked, so that all of them are reported at once."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, node_or_line: yaml.Node | int, path: str, message: str) -> None:
        line = node_or_line if isinstance(node_or_line, int) else line_of(node_or_line)
        self.problems.append(Problem(self.file, line, path, message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise SpecError(sorted(self.problems, key=lambda p: (p.line, p.path)))


class Invalid(Exception):
    """Internal: a value failed a check; converted into a Problem at the node."""


class Type:
    description = ""

    def check(self, node: yaml.Node, path: str, errors: Errors, lines: dict[str, int]) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError


_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_INT_TAG = "tag:yaml.org,2002:int"


def show(value: Any) -> str:
    """A value the user typed on the command line, quoted in an error message: repr (so one line) and cut short.
    Never for file content: messages about a file say where and what is wrong, not what was written there."""
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def _scalar(node: yaml.Node) -> Any:
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    # the tag's constructor called directly: construct_object would also remember every node it ever saw
    construct = _CONSTRUCTOR.yaml_constructors.get(node.tag, yaml.constructor.SafeConstructor.construct_undefined)
    try:
        value = construct(_CONSTRUCTOR, node)
    except (yaml.YAMLError, ValueError, OverflowError, TypeError, ArithmeticError):
        # e.g. an !!int that is not one, a date such as 2024-13-45, an integer of 5,000 digits
        return node.value
    return node.value if isinstance(value, types.GeneratorType) else value  # e.g. !!set on a scalar


def _kind(node: yaml.Node) -> str:
    """What a node is, in words: its type, never its content (the file may hold secrets)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _value_kind(_scalar(node))


def _value_kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return "text" if isinstance(value, str) else "a date or other typed value"


@dataclass
class Scalar(Type):
    """A string/int/bool with an optional check returning an error message (or None)."""

    py: type
    description: str = ""
    enum: tuple[Any, ...] = ()
    pattern: str = ""
    minimum: int | None = None
    maximum: int | None = None
    validate: Callable[[Any], str | None] | None = None
    what: str = ""

    def check(self, node: yaml.Node, path: str, errors: Errors, lines: dict[str, int]) -> Any:
        lines[path] = line_of(node)
        # every message says what is wanted, never what was written (the file may hold secrets)
        if not isinstance(node, yaml.ScalarNode):
            errors.add(node, path, f"expected {self._what()}, got {_kind(node)}")
            return None
        if self.py is int and node.tag == _INT_TAG and len(node.value) > 20:
            errors.add(node, path, "out of range" + self._range())
            return None
        value = _scalar(node)
        if self.py is str and isinstance(value, (int, float)) and not isinstance(value, bool) and not self.enum:
            value = node.value  # '8080' or 1.5 written bare is still usable as text where text is wanted
        ok = isinstance(value, self.py) and not (self.py is int and isinstance(value, bool))
        if not ok:
            errors.add(node, path, f"expected {self._what()}, got {_value_kind(value)}")
            return None
        if self.enum and value not in self.enum:
            errors.add(node, path, f"must be one of: {', '.join(map(str, self.enum))}")
            return None
        if self.pattern and not re.fullmatch(self.pattern, value):
            errors.add(node, path, f"must be {self.what or 'valid'}")
            return None
        if self.minimum is not None and value < self.minimum:
            errors.add(node, path, f"must be at least {self.minimum}")
            return None
        if self.maximum is not None and value > self.maximum:
            errors.add(node, path, f"must be at most {self.maximum}")
            return None
        if self.validate:
            message = self.validate(value)
            if message:
                errors.add(node, path, message)
                return None
        return value

    def _what(self) -> str:
        return self.what or {str: "text", int: "an integer", bool: "true or false"}.get(self.py, "a value")

    def _range(self) -> str:
        low, high = self.minimum, self.maximum
        return f" ({low} to {high})" if low is not None and high is not None else \
            f" (at most {high})" if high is not None else ""

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": {str: "string", int: "integer", bool: "boolean"}[self.py]}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.pattern:
            out["pattern"] = f"^{self.pattern}$"
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Quantity(Type):
    """A Kubernetes quantity; `cpu` quantities may also be written as bare numbers."""

    kind: str  # "cpu" or "memory"
    description: str = ""
    minimum: str = ""  # e.g. the smallest host that can run anything: capacities below it break the packing

    def check(self, node: yaml.Node, path: str, errors: Errors, lines: dict[str, int]) -> Any:
        lines[path] = line_of(node)
        if not isinstance(node, yaml.ScalarNode):
            errors.add(node, path, f"expected a {self.kind} quantity, got {_kind(node)}")
            return None
        value = parse_quantity(str(node.value))
        if value is None or value <= 0:
            errors.add(node, path, f"not a valid {'CPU' if self.kind == 'cpu' else 'memory'} quantity: a positive "
                       + ("number of cores such as 500m or 2" if self.kind == "cpu" else "size such as 256Mi or 2Gi"))
            return None
        units = value * 1000 if self.kind == "cpu" else value
        if units > MAX_QUANTITY_UNITS:
            errors.add(node, path, "out of range (Kubernetes keeps a quantity in 64 bits of "
                       + ("millicores)" if self.kind == "cpu" else "bytes)"))
            return None
        if self.kind == "memory" and value != value.to_integral_value():
            errors.add(node, path, "must be a whole number of bytes")
            return None
        if self.kind == "cpu" and units != units.to_integral_value():
            errors.add(node, path, "must not be finer than 1m (one millicore)")
            return None
        least = parse_quantity(self.minimum) if self.minimum else None
        if least is not None and value < least:
            errors.add(node, path, f"must be at least {self.minimum}")
            return None
        return str(node.value)

    def json_schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "string", "pattern": _QUANTITY.pattern}, {"type": "number", "exclusiveMinimum": 0}],
                "description": self.description or f"Kubernetes {self.kind} quantity"}


@dataclass
class ListOf(Type):
    item: Type
    description: str = ""
    min_items: int = 0

    def check(self, node: yaml.Node, path: str, errors: Errors, lines: dict[str, int]) -> Any:
        lines[path] = line_of(node)
        if not isinstance(node, yaml.SequenceNode):
            errors.add(node, path, f"expected a list, got {_kind(node)}")
            return None
        if len(node.value) < self.min_items:
            errors.add(node, path, f"needs at least {self.min_items} item(s)")
        return [self.item.check(child, f"{path}[{i}]", errors, lines) for i, child in enumerate(node.value)]

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.item.json_schema()}
        if self.min_items:
            out["minItems"] = self.min_items
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class MapOf(Type):
    """A mapping from free-form string keys to values of one type (env, labels)."""

    value: Type
    description: str = ""
    key_pattern: str = ""
    key_what: str = ""  # the key syntax in words, for the message when a key does not match key_pattern

    def check(self, node: yaml.Node, path: str, errors: Errors, lines: dict[str, int]) -> Any:
        """The keys are the user's, not the schema's: a problem names the map's path and the entry's line, never
        the key (it may be a secret, or text that forges output)."""
        lines[path] = line_of(node)
        if not isinstance(node, yaml.MappingNode):
            errors.add(node, path, f"expected a mapping, got {_kind(node)}")
            return None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                errors.add(key_node, path, f"a key must be text, not {_kind(key_node)}")
                continue
            key = str(key_node.value)
            if key in out:
                errors.add(key_node, path, "duplicate key")
                continue
            if self.key_pattern and not re.fullmatch(self.key_pattern, key):
                errors.add(key_node, path, "invalid key" + (f": a key must be {self.key_what}" if self.key_what
                                                            else ""))
                continue
            out[key] = self.value.check(value_node, path, errors, {})  # {}: the map's own line stays
        return out

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", "additionalProperties": self.value.json_schema()}
        if self.key_pattern:
            out["propertyNames"] = {"pattern": f"^{self.key_pattern}$"}
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Field:
    type: Type
    required: bool = False
    default: Any = None
    doc: str = ""


@dataclass
class Obj(Type):
    """A mapping with known fields; unknown fields are errors (typos must not pass silently)."""

    fields: dict[str, Field]
    description: str = ""
    shorthand: Type | None = None  # e.g. a port written as a bare integer
    shorthand_key: str = ""

    def check(self, node: yaml.Node, path: str, errors: Errors, lines: dict[str, int]) -> Any:
        lines[path] = line_of(node)
        if self.shorthand is not None and isinstance(node, yaml.ScalarNode):
            value = self.shorthand.check(node, path, errors, lines)
            lines[f"{path}.{self.shorthand_key}"] = line_of(node)
            return None if value is None else self._defaults({self.shorthand_key: value})
        if not isinstance(node, yaml.MappingNode):
            errors.add(node, path, f"expected a mapping, got {_kind(node)}")
            return None
        out: dict[str, Any] = {}
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                errors.add(key_node, path, f"a key must be text, not {_kind(key_node)}")
                continue
            key = str(key_node.value)
            # an unknown key is the user's text, so a problem about it names the parent path and the line only
            known = key in self.fields
            sub = (f"{path}.{key}" if path else key) if known else path
            if key in seen:
                errors.add(key_node, sub, "duplicate key")
                continue
            seen.add(key)
            if not known:
                errors.add(key_node, path, self._unknown(key))
                continue
            if isinstance(value_node, yaml.ScalarNode) and value_node.tag == "tag:yaml.org,2002:null" \
                    and not self.fields[key].required:
                lines[sub] = line_of(value_node)
                continue  # `field:` with no value means "use the default"
            out[key] = self.fields[key].type.check(value_node, sub, errors, lines)
        for name, f in self.fields.items():
            if f.required and name not in seen:
                errors.add(node, f"{path}.{name}" if path else name, "required field is missing")
        return self._defaults(out)

    def _unknown(self, key: str) -> str:
        hint = _close_match(key, self.fields)
        allowed = ", ".join(self.fields)
        return "unknown field (" + (f"did you mean {hint}? " if hint else "") + f"allowed: {allowed})"

    def _defaults(self, out: dict[str, Any]) -> dict[str, Any]:
        for name, f in self.fields.items():
            if name not in out and not f.required:
                out[name] = f.default() if callable(f.default) else f.default
        return out

    def json_schema(self) -> dict[str, Any]:
        props = {}
        for name, f in self.fields.items():
            prop = f.type.json_schema()
            if f.doc:
                prop["description"] = f.doc
            if f.default is not None and not callable(f.default):
                prop["default"] = f.default
            props[name] = prop
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        required = [n for n, f in self.fields.items() if f.required]
        if required:
            out["required"] = required
        if self.description:
            out["description"] = self.description
        if self.shorthand is not None:
            return {"anyOf": [self.shorthand.json_schema(), out]}
        return out


def _close_match(key: str, names: dict[str, Any]) -> str | None:
    import difflib  # only on the error path

    found = difflib.get_close_matches(key, list(names), n=1, cutoff=0.7)
    return found[0] if found else None


DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_LABEL_WHAT = "a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
HYBRIDORCH_KINDS = ("Stack", "Hosts", "Policy", "SocTest")  # the kinds of our own documents


@dataclass
class Document:
    """A whole input file: the checked plain values and the line of every field path."""

    file: str
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int:
        """The line of `path`, or of its nearest parent that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("", 1)


def _envelope_problem(node: yaml.Node, root: Obj) -> tuple[int, str] | None:
    """Why the file is not a document of root's apiVersion and kind, or None when it is one."""
    api, kind = root.fields.get("apiVersion"), root.fields.get("kind")
    if api is None or kind is None or not isinstance(api.type, Scalar) or not isinstance(kind.type, Scalar):
        return None
    want_api, want_kind = api.type.enum[0], kind.type.enum[0]
    what = f"not a hybridorch {want_kind} file (it needs apiVersion: {want_api} and kind: {want_kind})"
    if not isinstance(node, yaml.MappingNode):
        return line_of(node), what
    found = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value in ("apiVersion", "kind")}
    got_api, got_kind = found.get("apiVersion"), found.get("kind")
    if not isinstance(got_api, yaml.ScalarNode) or got_api.value != want_api:
        return (line_of(got_api) if got_api is not None else line_of(node)), what
    if not isinstance(got_kind, yaml.ScalarNode) or got_kind.value != want_kind:
        # naming a kind of ours discloses nothing; any other kind is the file's text and is not shown
        known = isinstance(got_kind, yaml.ScalarNode) and got_kind.value in HYBRIDORCH_KINDS
        other = f": it is a {got_kind.value!r}" if known else ""
        return (line_of(got_kind) if got_kind is not None else line_of(node)), what + other
    return None


def check_document(file: str, root: Obj, text: str | None = None, errors: Errors | None = None,
                   raise_errors: bool = True) -> Document:
    """Read and type-check a file against `root`; raises SpecError listing every problem (unless asked not to,
    so the caller can add cross-field problems first)."""
    with no_gc():  # see no_gc: the node tree and the checked values are large and hold no cycles
        return _check_document(file, root, text, errors, raise_errors)


def _check_document(file: str, root: Obj, text: str | None, errors: Errors | None, raise_errors: bool) -> Document:
    node = read_nodes(file, text)
    errors = errors or Errors(file)
    doc = Document(file)
    if node is None:
        errors.add(1, "", "the file is empty")
        raise SpecError(errors.problems)
    not_ours = _envelope_problem(node, root)
    if not_ours:
        # the file may be anything (a key, a password file): say what it is not, quote nothing of it
        errors.add(not_ours[0], "", not_ours[1])
        raise SpecError(errors.problems)
    doc.values = root.check(node, "", errors, doc.lines) or {}
    doc.lines[""] = line_of(node)
    if raise_errors:
        errors.raise_if_any()
    return doc
