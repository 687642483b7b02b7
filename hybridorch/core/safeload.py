"""Reading user input safely: every loader (stack, hosts, policy, SocTest plan) reads through `read_input` and
parses through `compose_yaml`, so no input can disclose another file, block, exhaust memory or crash the parser.

Rules: only regular files, at most MAX_INPUT_BYTES, UTF-8 text; YAML with bounded nesting and alias expansion,
one document; paths named inside a file stay inside that file's directory (`path_inside`).
"""
from __future__ import annotations

import gc
import os
import re
import stat
from contextlib import contextmanager
from typing import Any, Iterator

import yaml

from hybridorch.errors import Problem, SpecError

# large enough for a stack of 100,000 workloads (about 16 MiB written out), small enough to refuse a disk image
MAX_INPUT_BYTES = 32 * 2**20
# a stack is about 7 levels deep; libyaml's parse time grows with the square of the depth (20,000 nested `[`
# take seconds, 100,000 crash the interpreter), so nesting is cut off early, while parsing
MAX_DEPTH = 64
# aliases may add as many nodes as the file itself holds, and at least this many: a few hundred bytes of nested
# aliases ("billion laughs") otherwise expand to billions of nodes when checked
ALIAS_NODES_FLOOR = 100_000

try:  # the C parser is several times faster; fall back when libyaml is absent
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


def _fail(path: str, message: str, line: int = 0) -> SpecError:
    return SpecError([Problem(path, line, "", message)])


# --- files ---------------------------------------------------------------------------------------

def path_inside(owner_file: str, ref: str) -> str | None:
    """The path `ref` names inside `owner_file` (relative to its directory), or None when it leaves that directory
    (an absolute path, `..`, or a symlink pointing out): a file must not make the tool read files beside it."""
    if not ref or os.path.isabs(ref) or "\0" in ref:
        return None
    base = os.path.realpath(os.path.dirname(os.path.abspath(owner_file)))
    target = os.path.realpath(os.path.join(base, ref))
    try:
        return target if os.path.commonpath([base, target]) == base else None
    except ValueError:  # pragma: no cover - different drives (Windows)
        return None


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_input(path: str, what: str = "YAML text") -> str:
    """The UTF-8 text of a regular file of at most MAX_INPUT_BYTES; anything else is a one-line SpecError that
    quotes nothing of the file (it may be a key or a password file named by mistake or on purpose)."""
    try:
        # stat before open: opening a FIFO for reading would block until a writer appears
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(path, f"cannot read file: it is {_kind_of(st.st_mode)}, not a regular file")
        if st.st_size > MAX_INPUT_BYTES:
            raise _fail(path, f"file is larger than the {MAX_INPUT_BYTES // 2**20} MiB input limit")
        # O_NONBLOCK: the path may have been swapped for a FIFO since the stat
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _fail(path, f"cannot read file: it is {_kind_of(st.st_mode)}, not a regular file")
            chunks, size = [], 0
            while size <= MAX_INPUT_BYTES:
                chunk = os.read(fd, min(1 << 20, MAX_INPUT_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as err:
        raise _fail(path, f"cannot read file: {err.strerror or 'error'}") from None
    data = b"".join(chunks)
    if len(data) > MAX_INPUT_BYTES:  # it grew after the stat
        raise _fail(path, f"file is larger than the {MAX_INPUT_BYTES // 2**20} MiB input limit")
    return decode_text(path, data, what)


def decode_text(path: str, data: bytes, what: str = "YAML text") -> str:
    """UTF-8 text without its BOM (YAML, cloud-config and XML allow one); a NUL byte or bad UTF-8 is refused at
    its line, quoting nothing."""
    if b"\0" in data:
        raise _fail(path, f"is a binary file (a NUL byte), not {what}", data.count(b"\n", 0, data.index(b"\0")) + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _fail(path, "is not UTF-8 text", data.count(b"\n", 0, err.start) + 1) from None
    return text.removeprefix("\ufeff")


# --- YAML ----------------------------------------------------------------------------------------

class YamlLimit(yaml.YAMLError):
    """Internal: a document went past a limit; reported like a syntax error, at its line."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")


def _safe_reason(reason: str) -> str:
    """A YAML error reason without quoted input (the pure-Python parser quotes characters and alias names), since
    the file may not be YAML at all; token names such as '<block end>' and punctuation such as ':' are kept."""
    def keep(m: re.Match[str]) -> str:
        inner = m.group(0)[1:-1]
        syntax = inner.startswith("<") or (len(inner) <= 4 and not any(ch.isalnum() for ch in inner))
        return m.group(0) if syntax else "(not shown)"

    return _QUOTED.sub(keep, reason).strip()


@contextmanager
def no_gc() -> Iterator[None]:
    """Composing allocates hundreds of thousands of nodes that hold no cycles; the cyclic collector would rescan
    the whole growing tree again and again (loading 10,000 workloads took several times longer with it on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compose_yaml(text: str, path: str, *, max_depth: int = MAX_DEPTH,
                 alias_floor: int = ALIAS_NODES_FLOOR) -> yaml.Node | None:
    """One YAML document as nodes (with line numbers), or None for an empty file; syntax errors, several documents,
    nesting deeper than `max_depth` and aliases expanding past the budget are SpecErrors at their line."""
    loader = _Loader(text)
    try:
        with no_gc():
            loader.get_event()  # StreamStart
            if loader.check_event(yaml.StreamEndEvent):
                return None
            loader.get_event()  # DocumentStart
            node = _compose_node(loader, max_depth, alias_floor)
            loader.get_event()  # DocumentEnd
            if not loader.check_event(yaml.StreamEndEvent):
                event = loader.peek_event()
                raise _fail(path, "expected one YAML document, found several", event.start_mark.line + 1)
            return node
    except yaml.YAMLError as err:
        raise _syntax_error(err, path, text) from None
    finally:
        loader.dispose()


def compose_documents(text: str, path: str, *, max_depth: int = MAX_DEPTH,
                      alias_floor: int = ALIAS_NODES_FLOOR, limit: int | None = None) -> list[yaml.Node]:
    """Every document of a YAML stream as nodes (Kubernetes manifests, cloud-config), empty documents left out;
    the same limits as compose_yaml, with one alias budget for the whole stream. With `limit`, only the first
    `limit` documents (the rest is not parsed)."""
    loader = _Loader(text)
    budget = [0, 0]   # nodes written, nodes aliases add: over the stream, so a bomb split across documents counts
    tags: dict[tuple[str, Any], str] = {}
    out: list[yaml.Node] = []
    try:
        with no_gc():
            loader.get_event()  # StreamStart
            while not loader.check_event(yaml.StreamEndEvent) and (limit is None or len(out) < limit):
                loader.get_event()  # DocumentStart
                if loader.check_event(yaml.DocumentEndEvent):
                    loader.get_event()
                    continue
                node = _compose_node(loader, max_depth, alias_floor, budget, tags)
                loader.get_event()  # DocumentEnd
                if not (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
                    out.append(node)
        return out
    except yaml.YAMLError as err:
        raise _syntax_error(err, path, text) from None
    finally:
        loader.dispose()


# a `---` at the start of a line always starts a document: it ends a block scalar (whose lines are indented) and
# is an error inside a quoted scalar or a flow collection, on either side of a split
_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.M)


def split_documents(text: str, parts: int) -> list[tuple[int, str]]:
    """text cut before document starts into at most `parts` pieces of about equal size, each with the number of
    lines before it (one piece when the stream has directives, which belong to the documents after them)."""
    if parts < 2 or re.search(r"^%", text, re.M):
        return [(0, text)]
    cuts = [0]
    step = len(text) // parts
    for m in _DOCUMENT_START.finditer(text):
        if m.start() >= cuts[-1] + step and len(cuts) < parts:
            cuts.append(m.start())
    cuts.append(len(text))
    out, line = [], 0
    for start, end in zip(cuts, cuts[1:]):
        out.append((line, text[start:end]))
        line += text.count("\n", start, end)
    return out


def _syntax_error(err: yaml.YAMLError, path: str, text: str) -> SpecError:
    """A parser error as one line at its line; a character YAML does not allow (a control character, say) is
    named by its kind, never shown."""
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(0, int(err.position))) + 1
        return _fail(path, "YAML syntax error: a control or other character YAML does not allow", line)
    mark = getattr(err, "problem_mark", None)
    reason = getattr(err, "problem", None) or "unreadable"
    return _fail(path, f"YAML syntax error: {_safe_reason(str(reason))}", mark.line + 1 if mark else 0)


def _compose_node(loader: Any, max_depth: int, alias_floor: int, budget: list[int] | None = None,
                  tags: dict[tuple[str, Any], str] | None = None) -> yaml.Node:
    """Build the node tree from parser events without recursion, counting each collection's expanded size (aliases
    included) so that an alias bomb is refused while it is read, long before anything walks it."""
    anchors: dict[str, yaml.Node] = {}
    sizes: dict[int, int] = {}          # id(anchored node) -> its expanded size, once complete
    open_: list[list[Any]] = []         # [node, expanded size, anchor, flat children]
    written, aliased = budget if budget is not None else (0, 0)
    if tags is None:
        tags = {}   # resolving is regex work, and keys such as `name:` repeat endlessly
    get_event, Scalar, Node = loader.get_event, yaml.ScalarEvent, yaml.ScalarNode   # the loop runs once per event
    while True:
        event = get_event()
        if type(event) is Scalar:   # by far the most frequent: inline, no helper call
            tag = event.tag
            if tag is None or tag == "!":
                key = (event.value, event.implicit)
                tag = tags.get(key) or tags.setdefault(key, loader.resolve(Node, event.value, event.implicit))
            node: yaml.Node = Node(tag, event.value, event.start_mark, event.end_mark, event.style)
            written += 1
            size = 1
            if event.anchor is not None:
                anchors[event.anchor] = node
                sizes[id(node)] = 1
        elif isinstance(event, yaml.AliasEvent):
            target = anchors.get(event.anchor)
            if target is None:
                raise YamlLimit("an alias names no anchor defined before it", event.start_mark)
            size = sizes.get(id(target))   # type: ignore[assignment]
            if size is None:
                raise YamlLimit("an alias refers to a collection that contains it", event.start_mark)
            aliased += size
            if aliased > max(alias_floor, written):
                raise YamlLimit(f"aliases expand to more than {max(alias_floor, written)} nodes", event.start_mark)
            node = target
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            node = _collection_node(loader, event)
            written += 1
            if event.anchor is not None:
                anchors[event.anchor] = node  # its size is unknown until it ends: an alias inside it is recursive
            open_.append([node, 1, event.anchor, []])
            if len(open_) > max_depth:
                raise YamlLimit(f"nested deeper than {max_depth} levels", event.start_mark)
            continue
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            node, size, anchor, children = open_.pop()
            node.end_mark = event.end_mark
            node.value = children if isinstance(node, yaml.SequenceNode) else list(zip(children[::2], children[1::2]))
            if anchor is not None:
                sizes[id(node)] = size
        else:  # pragma: no cover - the parser emits no other events inside a document
            raise YamlLimit(f"unexpected {type(event).__name__}", event.start_mark)
        if not open_:
            if budget is not None:
                budget[0], budget[1] = written, aliased
            return node
        parent = open_[-1]
        parent[1] += size
        parent[3].append(node)


def _scalar_node(loader: Any, event: yaml.ScalarEvent, tags: dict[tuple[str, Any], str]) -> yaml.ScalarNode:
    tag = event.tag
    if tag is None or tag == "!":
        tag = tags.get((event.value, event.implicit))
        if tag is None:
            tag = tags[(event.value, event.implicit)] = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
    return yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)


def _collection_node(loader: Any, event: yaml.CollectionStartEvent) -> yaml.Node:
    """An empty sequence or mapping node; its children are set when its end event arrives."""
    kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(kind, None, event.implicit)
    return kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
