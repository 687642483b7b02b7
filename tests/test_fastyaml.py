"""The fast YAML paths of render (hybridorch/render/fastyaml.py) say exactly what PyYAML says, or step aside.

`parse_rendered` against `yaml.load_all` on template-like text and on byte mutations of it (quotes in comments,
single-quoted and block scalars, duplicate keys, tags, floats, escapes only YAML knows); `emit_block` against
PyYAML's dumper on generated documents. Both must also really be taken for the built-in templates' output,
or the speed they exist for is gone without a test noticing.
"""
from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hybridorch import api
from hybridorch.render import fastyaml, writer
from hybridorch.render.sandbox import Templates, _loader_for
from tests.test_fuzz import fixed

LOADER = yaml.CSafeLoader
WORDS = ["a", "name", "w0", "yes", "on", "null", "~", "1", "0x10", "1.5", "1e3", "2024-01-01", "-", "- a", "a: b",
         "#c", "a #c", "'q'", '"d"', "x" * 130, "a,b", "[x]", "{y}", "é", "\t", "a\nb", "<<", "=", "hybslot"]
text = st.text(st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",)), max_size=12)   # JSON pairs astral ones
scalars = st.one_of(st.sampled_from(WORDS), text, st.integers(-10**6, 10**6), st.booleans(),
                    st.none())
keys = st.one_of(st.sampled_from(["a", "b", "name", "on", "1", "a b", "x: y", "k" * 130, "<<"]), text)
docs = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                    max_leaves=25)


def reference(text: str) -> list | None:
    """PyYAML's documents of text (None when it refuses the text)."""
    try:
        return [d for d in yaml.load_all(text, Loader=LOADER) if d is not None]
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


def template_like(doc: object, indent: int = 0) -> list[str]:
    """doc the way the built-in templates write one: block collections, values and flow collections as JSON."""
    pad = " " * indent
    if not isinstance(doc, dict) or not doc:
        return [pad + "v: " + json.dumps(doc)]
    lines = []
    for i, (k, v) in enumerate(doc.items()):
        key = k if k.isidentifier() else json.dumps(k)
        if isinstance(v, dict) and v and i % 2 == 0:
            lines.append(f"{pad}{key}:")
            lines += template_like(v, indent + 2)
        elif isinstance(v, list) and v and i % 2 == 0:
            lines.append(f"{pad}{key}:")
            lines += [f"{pad}  - {json.dumps(x)}" for x in v]
        else:
            lines.append(f"{pad}{key}: {json.dumps(v)}")
    return lines


MUTATIONS = ['"', "'", "#", " # c", "\n# \"x\": 1\n", "|", "|-\n  ", ">", "!!str ", "!!float ", "&a ", "*a", "\\x41",
             "\\e", "\\u00e9", "\\ud83d\\ude00", "1.5", "1e3", ",", ":", ": ", "-", "- ", "\n---\n", "\n...\n", "%",
             "\t", "[", "]", "{", "}", "\n  ", "\n", "0o7", "0x1f", "<<: ", "? ", "hybslot1x", "é", "\x85"]


def fast_documents(text: str, loader: type) -> list | None:
    parsed = fastyaml.parse_rendered(text, loader)
    return None if parsed is None else [doc for doc, _ in parsed]


def check(text: str) -> None:
    parsed = fastyaml.parse_rendered(text, _loader_for(text))
    fast = None if parsed is None else [doc for doc, _ in parsed]
    expected = reference(text)
    if fast is not None:
        assert expected is not None, f"PyYAML refuses what the fast path read: {text!r}"
        assert fast == expected and [type(d) for d in fast] == [type(d) for d in expected], text
        for doc, origin in parsed or []:   # written from the skeleton: the text the walking emitter writes
            emitted = fastyaml.emit_parsed(origin, writer._CBlockDumper)
            assert emitted is None or emitted == writer._dump_one(doc), text


@fixed(400)
@given(st.lists(st.dictionaries(keys, docs, min_size=1, max_size=5), min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(MUTATIONS)), max_size=3))
def test_parse_rendered_reads_what_pyyaml_reads_or_steps_aside(documents, edits):
    text = "\n---\n".join("\n".join(template_like(d)) for d in documents) + "\n"
    check(text)
    for at, piece in edits:
        at %= len(text) + 1
        text = text[:at] + piece + text[at:]
        check(text)


@pytest.mark.parametrize("text", [
    "a: 'x \"y\" z'\n", "a: '\"y\"'\n", "a: |-\n  \"y\"\nb: 1\n", "a: \"x\" # \"c\"\n", "# \"c\": 1\na: \"x\"\n",
    'a: "x"\na: "y"\n', '{"a": "x", "a": "y"}\n', '"a": 1\n"b": [1, "x", {"c": -0}]\n', "a: !!str \"1\"\n",
    "a: \"\\x41\"\n", "a: \"\\/\"\n", 'a: "\\ud83d\\ude00"\n', "a: 1.5\n", "a: [1e3]\n", "a: \"x\"\n---\nb: 2\n",
    "---\n---\na: \"x\"\n", "a: \"x\n  y\"\n", "a: \"x\"\n...\n---\nb: 1\n", "%YAML 1.1\n---\na: \"x\"\n",
    'a: {"k":"v"}\n', "a: 012\n", "a: -1\nb: [0, -0, 7]\n", "8080: \"x\"\n", '"' + "k" * 1100 + '": 1\n',
    "a: hybslot0x\n", "a:\n  - \"x\"\n  -  \"y\"\n", "- \"x\"\n", "\"x\"\n", "a: \"x\" \"y\"\n", "a: b \"c\"\n",
])
def test_parse_rendered_on_hand_made_edge_cases(text):
    check(text)


@fixed(300)
@given(docs)
def test_emit_block_writes_what_pyyaml_writes_or_steps_aside(doc):
    document = {"k": doc} if not isinstance(doc, dict) or not doc else doc
    fast = fastyaml.emit_block(document, writer._CBlockDumper)
    # what writer._dump_one wrote before the fast path: libyaml's emitter, PyYAML's where libyaml adds `...`
    options = dict(sort_keys=False, default_flow_style=False, width=120, allow_unicode=False, explicit_start=True)
    expected = yaml.dump_all([document], Dumper=writer._CBlockDumper, **options)
    if expected.endswith("\n...\n"):
        expected = yaml.dump_all([document], Dumper=writer.BlockDumper, **options)
    assert fast is None or fast == expected


def test_emit_block_steps_aside_for_a_shared_collection_and_floats():
    shared = {"a": 1}
    assert fastyaml.emit_block({"x": shared, "y": shared}, writer._CBlockDumper) is None   # PyYAML: &id001
    assert fastyaml.emit_block({"x": 1.5}, writer._CBlockDumper) is None
    assert fastyaml.emit_block({"x": "y" * 200}, writer._CBlockDumper) is None               # may fold
    assert fastyaml.emit_block({"x": "y" * 100}, writer._CBlockDumper) == "---\nx: " + "y" * 100 + "\n"


def multiline(value: object) -> bool:
    if isinstance(value, dict):
        return any(multiline(v) for v in value.values())
    if isinstance(value, list):
        return any(multiline(v) for v in value)
    return isinstance(value, str) and "\n" in value


def test_the_built_in_templates_take_both_fast_paths(monkeypatch):
    """Every template output of the examples parses without PyYAML and every object but multi-line user data is
    written without it; the result is the same as the slow paths' (the golden files hold the text)."""
    slow: list[str] = []
    parse, emit = fastyaml.parse_rendered, fastyaml.emit_block

    def counted_parse(text: str, loader: type) -> list | None:
        out = parse(text, loader)
        if out is None:
            slow.append(text[:80])
        return out

    def counted_emit(doc: object, dumper: type) -> str | None:
        out = emit(doc, dumper)
        if out is None and not multiline(doc):
            slow.append(json.dumps(doc)[:80])
        return out

    monkeypatch.setattr(fastyaml, "parse_rendered", counted_parse)
    monkeypatch.setattr(fastyaml, "emit_block", counted_emit)
    rendered = api.render("examples/shop.yaml")
    assert rendered.stream() and not slow, slow
    monkeypatch.undo()
    texts = [Templates().text("kubernetes/service.yaml.j2", name="s", namespace="n", labels={"a": "b"},
                              selector={"a": "b"}, ports=[{"name": "http", "port": 80, "protocol": "TCP"}])]
    for text in texts:
        assert fast_documents(text, LOADER) == reference(text)


@fixed(200)
@given(st.recursive(scalars, lambda inner: st.lists(inner, max_size=30) | st.dictionaries(text, inner, max_size=4),
                    max_leaves=80))
def test_json_text_is_the_indented_json_of_the_value(value):
    """-o json writes long scalar lists on one line (a plan's pool names); the value read back is the same."""
    from hybridorch.core.text import json_text

    out = json_text(value)
    assert json.loads(out) == json.loads(json.dumps(value))
    if not isinstance(value, (list, dict)) or len(json.dumps(value)) < 40:
        assert out == json.dumps(value, indent=2) or "hybridorch-json-list" not in out
    assert json_text(["hybridorch-json-list:0"] * 20) == json.dumps(["hybridorch-json-list:0"] * 20)
