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


# --- shapes from skeletons, and the render in forked workers ------------------------------------------------

def test_a_document_read_through_a_skeleton_is_checked_by_its_tokens_kinds(tmp_path):
    """Documents of one skeleton share a validity verdict only when their tokens agree in kind, enum values and
    keys: an enum's non-member, a key or an integer where a string belongs still gets the full check."""
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "kubernetes" / "pod.yaml.j2").write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: {{ name }}, labels: {{ labels }}}\n"
        "spec:\n  template:\n    spec:\n      dnsPolicy: {{ policy }}\n"
        "      domain: {devices: {}, machine: {type: {{ image }}}}\n")
    tpl = Templates(str(tmp_path))

    def problems(name: object = "p", policy: object = "Default", image: object = "q35", labels: object = None) -> list:
        (doc, origin), = tpl.documents_with_origin("kubernetes/pod.yaml.j2", name=name, policy=policy, image=image,
                                                   labels=labels or {"a": "b"})
        assert origin is not None    # read through the fast path
        return validate.object_problems(doc, origin)

    assert problems() == [] and problems(name="q", image="j") == []    # the shape is known valid now
    assert problems(policy="None") == []
    assert any("dnsPolicy" in p for p in problems(policy="Sometimes"))   # an enum's non-member
    assert any("machine.type" in p for p in problems(image=5))           # an integer for a string
    assert any("labels" in p for p in problems(labels={"a": 5}))
    (doc, origin), = tpl.documents_with_origin("kubernetes/pod.yaml.j2", name="p", policy="Default", image="q35",
                                               labels={"bogus key": "b"})
    assert '"bogus key"' in validate._origin_shape(origin)[2]    # a key stays whole


def many(n: int) -> str:
    lines = ["apiVersion: hybridorch.dev/v1alpha1", "kind: Stack", "metadata: {name: par}", "spec:",
             "  hosts: [{name: pool, cpu: '64', memory: 256Gi, count: 4, virtualization: true}]", "  workloads:"]
    for i in range(n):
        kind = ("trusted", "internal", "untrusted")[i % 3]
        extra = ", ports: [{port: 8080}]" if i % 2 else ""
        extra += ", replicas: 2" if i % 4 == 1 else ""
        extra += ", os: windows, vm: {disk: {image: win.qcow2}}" if i % 7 == 6 else ""
        lines.append(f"    - {{name: w{i}, image: local/web:1, trust: {kind}, tenant: t{i % 3}{extra},"
                     f" resources: {{cpu: 100m, memory: 128Mi}}}}")
    return "\n".join(lines) + "\n"


def render_both(tmp_path, monkeypatch, text: str, templates: str | None = None):
    from hybridorch import proc
    from hybridorch.api import plan_stack
    from hybridorch.render import stack

    path = tmp_path / "par.yaml"
    path.write_text(text)
    plan = plan_stack(str(path))
    out = []
    for parallel_from in (10**9, 1):
        monkeypatch.setattr(stack, "PARALLEL_FROM", parallel_from)
        monkeypatch.setattr(proc, "workers", lambda: 3)   # three parts even on a one-CPU machine
        try:
            out.append(stack.render_plan(plan, templates_dir=templates))
        except RenderError as err:
            out.append(err)
    return out


def test_the_render_in_forked_workers_is_the_render_in_one_process(tmp_path, monkeypatch):
    sequential, parallel = render_both(tmp_path, monkeypatch, many(40))
    assert parallel._packed and not sequential._packed
    assert parallel.stream() == sequential.stream()
    assert [f.path for f in parallel.files] == [f.path for f in sequential.files]
    assert parallel.files == sequential.files
    assert parallel.documents == sequential.documents and parallel.groups == sequential.groups
    assert parallel.documents[-1] is parallel.groups[-1][1][-1]   # unpacked once: the same objects
    assert parallel.documents_by_workload() == sequential.documents_by_workload()
    out = tmp_path / "out"
    parallel.write(str(out))
    assert (out / "workloads" / "w39.yaml").read_text() == sequential.file("workloads/w39.yaml").content


@pytest.mark.parametrize("edit,match", [("  replicas: {{ w.replicas }}", "  replicas: {{ w.nope }}"),
                                        ("  replicas: {{ w.replicas }}", "  replicas: {{ 'two' }}")])
def test_a_worker_fails_the_render_as_one_process_does(tmp_path, monkeypatch, edit, match):
    from tests.conftest import ROOT

    text = (ROOT / "templates" / "kubernetes" / "workload.yaml.j2").read_text()
    (tmp_path / "tpl" / "kubernetes").mkdir(parents=True)
    (tmp_path / "tpl" / "kubernetes" / "workload.yaml.j2").write_text(text.replace(edit, match))
    sequential, parallel = render_both(tmp_path, monkeypatch, many(12), str(tmp_path / "tpl"))
    assert isinstance(sequential, RenderError) and isinstance(parallel, RenderError)
    assert str(parallel) == str(sequential) and parallel.exit_code == sequential.exit_code
