"""Fast paths for the YAML a render reads back and writes out, each exact for the subset it accepts and None
outside it (the caller then uses PyYAML, which stays the definition of the result).

Rendering 10,000 workloads parses about 20,000 template outputs and dumps as many objects; PyYAML's per-node
Python work took seconds for each. The paths here do the per-node work in C (json) or with memoized text:

- `parse_rendered`: template output is block YAML whose varying values are JSON scalars (the `yaml` filter writes
  every value as JSON). The quoted strings and integers are cut out, leaving a skeleton that repeats from one
  workload to the next; each skeleton is parsed by PyYAML once and turned into a JSON text with holes, and the
  cut tokens (JSON already) are put back into the holes and read with `json.loads`.
- `emit_block`: PyYAML's block style (indent 2, indentless sequences in mappings, width 120), with each scalar's
  text decided once and reused; a scalar that could fold at the width or span lines leaves it to PyYAML.
"""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import yaml

# --- parsing template output ---------------------------------------------------------------------------

# a JSON string on one line, or a JSON integer standing alone in block or flow context; anything else stays
# (the lookahead first lets the scan skip most characters after one test)
_TOKEN = re.compile(r'(?=["\-0-9])("[^"\\\n]*(?:\\[^\n][^"\\\n]*)*"|(?<=[ \[{,])-?(?:0|[1-9][0-9]{0,17})(?=[,\]}]|[ ]*$))',
                    re.M)
# only printable ASCII, tab and line breaks: YAML and JSON read those characters alike (NEL, LS, PS and DEL differ)
_UNSAFE = re.compile(r"[^\t\n\r\x20-\x7e]")
# a UTF-16 surrogate escape: JSON pairs them into one character, PyYAML keeps two
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SLOT = "hybslot{}x"
_SLOT_JSON = re.compile(r'"hybslot([0-9]+)x"')
_SLOT_KEY = re.compile(r'"hybslot([0-9]+)x":')
_SLOTS = [_SLOT.format(i) for i in range(4096)]
_MAX_SKELETONS = 2048


class _Compiled:
    """A skeleton as a JSON text with holes: pieces[i] comes before the token `order[i]` names; `keys` are the
    slots whose token is a mapping key."""

    __slots__ = ("pieces", "order", "keys", "docs", "emitted")

    def __init__(self, pieces: list[str], order: list[int], keys: frozenset[int], docs: list[dict[str, Any]]):
        self.pieces, self.order, self.keys = pieces, order, keys
        self.docs = docs   # the skeleton's own documents, a slot's name standing for each token
        self.emitted: dict[int, _Emission | None] = {}   # by document: see emit_parsed


class Origin(NamedTuple):
    """Where a parsed document came from: its skeleton, its place among the skeleton's documents, and the cut
    tokens (JSON texts). Two documents of one skeleton differ only in those tokens, so their shape follows from
    the skeleton and the tokens' kinds (validate.object_problems uses that instead of walking the document)."""

    skeleton: _Compiled
    index: int
    tokens: tuple[str, ...]


_skeletons: dict[str, _Compiled | None] = {}


_DOCUMENT_START = re.compile(r"^---\n", re.M)


Parsed = list[tuple[dict[str, Any], Origin]]


def parse_rendered(text: str, loader: type) -> Parsed | None:
    """The documents of a template's output (empty ones left out), exactly as `yaml.load_all(text, loader)` reads
    them, each with its Origin; None when the text is outside the subset this path is exact for, or not valid
    (PyYAML then says why)."""
    if _UNSAFE.search(text) or _SURROGATE.search(text) or "hybslot" in text or "*" in text:
        return None
    if "\n---" in text and not re.search(r"^(%|\.\.\.)", text, re.M):
        # a `---` line always starts a document (even inside a block or quoted scalar), so each document is
        # parsed alone: one output of many similar documents (a policy per workload) reuses their skeleton
        out: Parsed = []
        for chunk in _DOCUMENT_START.split(text):
            docs = _parse(chunk, loader) if chunk.strip() else []
            if docs is None:
                return None
            out.extend(docs)
        return out
    return _parse(text, loader)


def _parse(text: str, loader: type) -> Parsed | None:
    parts = _TOKEN.split(text)
    tokens = parts[1::2]
    # PyYAML refuses a simple key longer than 1024 characters, a slot never is
    if len(tokens) > len(_SLOTS) or (tokens and max(map(len, tokens)) > 1000):
        return None
    parts[1::2] = _SLOTS[:len(tokens)]
    skeleton = "".join(parts)
    compiled = _skeletons.get(skeleton, False)
    if compiled is False:
        compiled = _compile(skeleton, len(tokens), loader)
        if len(_skeletons) < _MAX_SKELETONS:
            _skeletons[skeleton] = compiled
    if compiled is None:
        return None
    pieces = compiled.pieces
    joined = [""] * (2 * len(pieces) - 1)
    joined[0::2] = pieces
    joined[1::2] = [tokens[i] for i in compiled.order]
    try:
        docs = _DECODER.decode("".join(joined))
    except (ValueError, RecursionError):   # a token JSON does not read as YAML does (an escape only YAML knows)
        return None
    cut = tuple(tokens)
    return [(doc, Origin(compiled, i, cut)) for i, doc in enumerate(docs)]


def _no_float(text: str) -> Any:
    raise ValueError("floats are left to PyYAML")


_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_float)


def _compile(skeleton: str, slots: int, loader: type) -> _Compiled | None:
    """The skeleton's documents as JSON with a hole per cut token, when every token came back as a whole plain
    scalar, exactly once, as a value or a mapping key, and nothing else needs more than JSON can say."""
    try:
        nodes = [n for n in yaml.compose_all(skeleton, Loader=loader)]
    except (yaml.YAMLError, RecursionError):
        return None
    seen: list[int] = []
    if not all(isinstance(n, yaml.MappingNode) and _slots_plain(n, seen) for n in nodes if not _is_null(n)):
        return None
    if sorted(seen) != list(range(slots)):
        return None
    try:
        docs = [d for d in yaml.load_all(skeleton, Loader=loader) if d is not None]
        if not all(_json_exact(d) for d in docs):
            return None
        text = json.dumps(docs, ensure_ascii=True, allow_nan=False)
    except (yaml.YAMLError, ValueError, RecursionError):
        return None
    split = _SLOT_JSON.split(text)
    order = [int(i) for i in split[1::2]]
    if sorted(order) != list(range(slots)):
        return None
    return _Compiled(split[0::2], order, frozenset(int(i) for i in _SLOT_KEY.findall(text)), docs)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _slots_plain(node: yaml.Node, seen: list[int]) -> bool:
    """Every scalar mentioning a slot is exactly one, written plain (not inside quotes, a block scalar, or with a
    tag); collections carry no tag of their own. Records the slots met."""
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, yaml.ScalarNode):
            if "hybslot" in n.value:
                m = re.fullmatch(r"hybslot([0-9]+)x", n.value)
                if m is None or n.style not in (None, "") or n.tag != "tag:yaml.org,2002:str":
                    return False
                seen.append(int(m.group(1)))
        elif isinstance(n, yaml.MappingNode):
            if n.tag != "tag:yaml.org,2002:map":
                return False
            todo.extend(x for pair in n.value for x in pair)
        elif isinstance(n, yaml.SequenceNode):
            if n.tag != "tag:yaml.org,2002:seq":
                return False
            todo.extend(n.value)
    return True


def _json_exact(value: Any) -> bool:
    """JSON says this value exactly: str-keyed mappings, lists, strings, ints, booleans and null."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            if not all(type(k) is str for k in v):
                return False
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
        elif not (v is None or type(v) in (str, int, bool)):
            return False
    return True


# --- emitting block YAML -------------------------------------------------------------------------------

WIDTH = 120            # the dumper's line width, past which PyYAML folds long scalars
_KEY_LIMIT = 128       # a longer key is written as an explicit `? key`
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*(?::[A-Za-z0-9_./-]+)*")
# plain words YAML 1.1 reads as booleans or null
_WORDS = frozenset("yes Yes YES no No NO true True TRUE false False FALSE on On ON off Off OFF null Null NULL".split())
_MAX_MEMO = 500_000


class _Unsupported(Exception):
    """A value this path does not write exactly like PyYAML; the caller dumps with PyYAML."""


_forms: dict[str, str] = {}
_key_forms: dict[str, str] = {}


def _pyyaml_form(value: str, dumper: type, key: bool) -> str:
    """PyYAML's own text for one string, as a simple mapping key or a value (one line, else _Unsupported)."""
    options: dict[str, Any] = dict(Dumper=dumper, sort_keys=False, default_flow_style=False, width=10**6,
                                   allow_unicode=False)
    if key:
        text = yaml.dump({value: 1}, **options)
        form = text[:-len(": 1\n")] if text.endswith(": 1\n") else ""
    else:
        text = yaml.dump({"k": value}, **options)
        form = text[len("k: "):-1] if text.startswith("k: ") and text.endswith("\n") else ""
    if not form or "\n" in form:
        raise _Unsupported
    return form


def _str_form(value: str, dumper: type, key: bool) -> str:
    memo = _key_forms if key else _forms
    form = memo.get(value)
    if form is None:
        if _PLAIN.fullmatch(value) and value not in _WORDS:
            form = value   # no indicator, no resolver claims a word starting with a letter, `_` or `/`
        else:
            form = _pyyaml_form(value, dumper, key)
        if key and len(form) >= _KEY_LIMIT:
            raise _Unsupported
        if len(memo) < _MAX_MEMO:
            memo[value] = form
    return form


def _scalar(value: Any, dumper: type, key: bool = False) -> str:
    kind = type(value)
    if kind is str or (isinstance(value, str) and kind in _STR_TYPES):
        return _str_form(value, dumper, key)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    raise _Unsupported


_STR_TYPES: set[type] = {str}


def register_str(kind: type) -> None:
    """A str subclass the dumper represents as a plain str (the render's YamlText)."""
    _STR_TYPES.add(kind)


_SLOT_TEXT = re.compile(r"hybslot([0-9]+)x")
_token_forms: dict[str, str] = {}
_token_key_forms: dict[str, str] = {}
_token_values: dict[str, Any] = {}


class _Emission(NamedTuple):
    """A skeleton document's text cut at its slots, the slots in the order they appear, and per mapping with
    slot keys its literal keys and its key slots (tokens that collide there make fewer keys than the skeleton)."""

    pieces: list[str]
    slots: list[int]
    key_groups: list[tuple[frozenset[str], tuple[int, ...]]]


def emit_parsed(origin: Origin, dumper: type) -> str | None:
    """emit_block's text for a document parse_rendered read, without walking it: the skeleton's document is
    emitted once (each slot a plain word in its place) and each token's form goes where its slot is. The layout
    is the same for any tokens, as scalars of any form sit on the line of their key or dash; only the width can
    differ, so a text with a line past it is left to emit_block (None), which decides about folding; so is a
    document whose key tokens collide."""
    skeleton = origin.skeleton
    plan = skeleton.emitted.get(origin.index, False)
    if plan is False:
        plan = skeleton.emitted[origin.index] = _emission(skeleton.docs[origin.index], dumper)
    if plan is None:
        return None
    tokens, keys = origin.tokens, skeleton.keys
    for literal, group in plan.key_groups:
        values = {_token_value(tokens[i]) for i in group}
        if len(values) != len(group) or not literal.isdisjoint(values):
            return None
    try:
        forms = [_token_form(tokens[i], i in keys, dumper) for i in plan.slots]
    except _Unsupported:
        return None
    joined = [""] * (2 * len(plan.pieces) - 1)
    joined[0::2] = plan.pieces
    joined[1::2] = forms
    text = "".join(joined)
    if max(map(len, text.split("\n"))) > WIDTH:
        return None
    return text


def _emission(doc: dict[str, Any], dumper: type) -> _Emission | None:
    text = emit_block(doc, dumper)
    if text is None:
        return None
    parts = _SLOT_TEXT.split(text)
    slots = [int(i) for i in parts[1::2]]
    if len(set(slots)) != len(slots):
        return None
    groups = []
    todo: list[Any] = [doc]
    while todo:
        x = todo.pop()
        if type(x) is dict:
            slot_keys = tuple(int(m.group(1)) for k in x if (m := _SLOT_TEXT.fullmatch(k)))
            if slot_keys:
                groups.append((frozenset(k for k in x if not _SLOT_TEXT.fullmatch(k)), slot_keys))
            todo.extend(x.values())
        elif type(x) is list:
            todo.extend(x)
    return _Emission(parts[0::2], slots, groups)


def _token_value(token: str) -> Any:
    value = _token_values.get(token)
    if value is None:
        value = json.loads(token)
        if len(_token_values) < _MAX_MEMO:
            _token_values[token] = value
    return value


def _token_form(token: str, key: bool, dumper: type) -> str:
    """How the dumper writes the value a cut token (JSON text) stands for, as a key or a value."""
    memo = _token_key_forms if key else _token_forms
    form = memo.get(token)
    if form is None:
        value = _token_value(token)
        form = _str_form(value, dumper, key) if type(value) is str else str(value)
        if len(memo) < _MAX_MEMO:
            memo[token] = form
    return form


def emit_block(doc: Any, dumper: type) -> str | None:
    """`---` and doc in PyYAML's block style, the text yaml.dump_all([doc], Dumper=dumper, sort_keys=False,
    default_flow_style=False, width=120, explicit_start=True) writes; None when this path cannot say it exactly."""
    if type(doc) is not dict or not doc:
        return None
    out = ["---\n"]
    try:
        _Emitter(out, dumper).mapping(doc, 0, "")
    except (_Unsupported, RecursionError):
        return None
    return "".join(out)


class _Emitter:
    """One document's lines into `out`; a collection met twice (PyYAML writes an anchor and an alias for it), a
    float, a long key or a scalar that may fold or span lines raise _Unsupported."""

    def __init__(self, out: list[str], dumper: type):
        self.out, self.dumper = out, dumper
        self.seen: set[int] = set()

    def _once(self, collection: Any) -> None:
        n = len(self.seen)
        self.seen.add(id(collection))
        if len(self.seen) == n:
            raise _Unsupported

    def _form(self, v: Any, column: int) -> str:
        form = _forms.get(v) if type(v) is str else None
        if form is None:
            if type(v) is dict:   # empty: non-empty ones are written as blocks
                return "{}"
            if type(v) is list:
                return "[]"
            form = _scalar(v, self.dumper)
        if column + len(form) > WIDTH:   # PyYAML may fold it at a space past the width
            raise _Unsupported
        return form

    def mapping(self, d: dict[Any, Any], indent: int, lead: str) -> None:
        self._once(d)
        pad = " " * indent
        out = self.out
        for k, v in d.items():
            key = _key_forms.get(k) if type(k) is str else None
            if key is None:
                key = _scalar(k, self.dumper, key=True)
                if len(key) >= _KEY_LIMIT:
                    raise _Unsupported
            head = lead + key + ":"
            lead = pad
            kind = type(v)
            if kind is str:   # the most common value: its form inline
                form = _forms.get(v) or _str_form(v, self.dumper, False)
                if len(head) + 1 + len(form) > WIDTH:
                    raise _Unsupported
                out.append(head + " " + form + "\n")
            elif kind is dict and v:
                out.append(head + "\n")
                self.mapping(v, indent + 2, pad + "  ")
            elif kind is list and v:
                out.append(head + "\n")
                self.sequence(v, indent, pad)    # PyYAML writes a mapping's sequence indentless
            else:
                out.append(head + " " + self._form(v, len(head) + 1) + "\n")

    def sequence(self, items: list[Any], indent: int, lead: str) -> None:
        self._once(items)
        pad = " " * indent
        for item in items:
            head = lead + "- "
            lead = pad
            kind = type(item)
            if kind is dict and item:
                self.mapping(item, indent + 2, head)
            elif kind is list and item:
                self.sequence(item, indent + 2, head)
            else:
                self.out.append(head + self._form(item, len(head)) + "\n")
