"""The fast paths of render give the same answers as the slow ones: libyaml's dumper the same text as PyYAML's,
the shape cache of validation never lets an invalid object through, and the C loader still refuses aliases."""
from __future__ import annotations

import json
import random
from importlib import resources

import pytest
import yaml

from hybridorch.errors import RenderError
from hybridorch.render import validate
from hybridorch.render.sandbox import Templates, _loader_for
from hybridorch.render.writer import BlockDumper, dump_yaml

TRICKY = ["", " ", "x" * 300, "line1\nline2\n", "line1\nline2", "x\n\n\n", "\n", "\n\n", "trailing \n", "\ttab",
          "é", "日本", "\x00", "\u2028", "- a", "a: b", "#c", "yes", "null", "0o12", "1e3", "'q'", '"d"',
          "  lead\nx",
          "a\r\nb", "%x", "@x", "*a", "&a", "!t", "|", ">", "a\u0085b", "\x7f", "\U0001F600", "#!/bin/sh\necho hi\n"]


def python_dump(docs: list) -> str:
    return yaml.dump_all(docs, Dumper=BlockDumper, sort_keys=False, default_flow_style=False, width=120,
                         allow_unicode=False, explicit_start=True)


def test_dump_is_the_text_pyyaml_writes_for_tricky_strings():
    rng = random.Random(7)
    alphabet = "ab :#\n\t-'\"é\\{}[],&*!|>%@`\u00a0\x01"
    values = TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(500)]
    docs = [{"k": v, "list": [v, {"n": v}], (v or "e"): 1, "n": 3, "b": True} for v in values]
    assert dump_yaml(docs) == python_dump(docs)
    memo: dict[int, str] = {}
    assert dump_yaml(docs, memo) == python_dump(docs)   # fills the memo
    assert dump_yaml(docs, memo) == python_dump(docs)   # from the memo: the same text


def test_the_schemas_check_nothing_but_what_the_shape_keeps():
    """The shape cache is sound only while the schemas constrain types, keys and enums: fail if that changes."""
    value_checks = {"pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
                    "maxLength", "minItems", "maxItems", "uniqueItems", "multipleOf", "const", "minProperties",
                    "maxProperties", "patternProperties", "propertyNames", "contains", "not", "if",
                    "dependentSchemas", "dependentRequired"}
    for name in validate.SCHEMA_FILES:
        todo = [json.loads(resources.files("hybridorch.data").joinpath(name).read_text())]
        while todo:
            x = todo.pop()
            if isinstance(x, dict):
                assert not value_checks & set(k for k in x if not isinstance(x.get(k), dict) or k != "properties"), \
                    (name, value_checks & set(x))
                todo.extend(x.values())
            elif isinstance(x, list):
                todo.extend(x)


def service(name: str, app: object = None, port: object = 80) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "n"},
            "spec": {"selector": {"app": name if app is None else app}, "ports": [{"port": port, "protocol": "TCP"}]}}


@pytest.mark.parametrize("bad,where", [(service("b", app=5), "spec.selector.app"),
                                       (service("c", port="eighty"), "spec.ports.0.port"),
                                       ({**service("d"), "extra": 1}, "(object)")])
def test_an_object_shaped_like_a_valid_one_is_still_checked(bad, where):
    assert validate.object_problems(service("a")) == []          # its shape is now known valid
    assert validate.object_problems(service("zz", port=81)) == []
    problems = validate.object_problems(bad)
    assert problems and any(p.startswith(where) for p in problems), problems


def test_the_c_loader_refuses_aliases_and_deep_flow_nesting_takes_the_python_loader(tmp_path):
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "kubernetes" / "x.yaml.j2").write_text("a: &a [x, x]\nb: [*a, *a]\n")
    (tmp_path / "kubernetes" / "deep.yaml.j2").write_text("a: " + "[" * 1200 + "]" * 1200 + "\n")
    tpl = Templates(str(tmp_path))
    with pytest.raises(RenderError, match="aliases are not allowed"):
        tpl.documents("kubernetes/x.yaml.j2")
    assert _loader_for("[" * 1200).__name__ == "_NoAliasLoader"
    assert _loader_for("a: [b]").__name__ == "CSafeLoader" and _loader_for("a: [*b]").__name__ == "_NoAliasCLoader"
    with pytest.raises(RenderError, match="nests too deeply|not valid YAML"):
        tpl.documents("kubernetes/deep.yaml.j2")
