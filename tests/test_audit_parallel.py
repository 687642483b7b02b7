"""A large manifest stream is audited in parts, one forked worker per CPU (ops/audit_live._audit_manifests): the
same findings at the same lines as reading it whole, the same one-line errors at the same lines, and the namespace
rule still sees every part. The size threshold is lowered here so that small files take the parallel path."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hybridorch import proc
from hybridorch.core.safeload import split_documents
from hybridorch.errors import SpecError
from hybridorch.ops import audit_live

NOW = 1_700_000_000.0


def objects(n: int) -> str:
    out = []
    for i in range(n):
        meta = f"metadata:\n  name: o{i}\n  namespace: ns{i % 7}\n  labels: {{hybridorch.dev/ttl: 30d}}\n" \
               f"  creationTimestamp: \"2023-0{1 + i % 9}-01T00:00:00Z\"\n"
        if i % 5 == 0:
            out.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{i % 7}}}\n")
        elif i % 5 == 1:
            out.append("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n" + meta
                       + "spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n")
        elif i % 5 == 2:
            out.append("apiVersion: v1\nkind: Pod\n" + meta + f"spec:\n  hostNetwork: {str(i % 3 == 0).lower()}\n"
                       "  containers:\n  - name: c\n    image: busybox\n    securityContext: {privileged: true}\n")
        else:
            out.append("apiVersion: v1\nkind: Service\n" + meta + "spec:\n  type: NodePort\n  ports: [{port: 22}]\n")
    return "---\n".join(out)


def both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """(whole, in parts): each a finding list or the SpecError lines."""
    def run() -> object:
        try:
            return audit_live.audit_files([str(path)], now=NOW)
        except SpecError as err:
            return err.lines()
    monkeypatch.setattr(audit_live, "PARALLEL_BYTES", 10**12)
    whole = run()
    monkeypatch.setattr(audit_live, "PARALLEL_BYTES", 1000)
    return whole, run()


def test_parts_give_the_findings_of_the_whole(tmp_path: Path, monkeypatch):
    path = tmp_path / "many.yaml"
    path.write_text(objects(300))
    assert len(split_documents(path.read_text(), 2)) == 2
    whole, parts = both(path, monkeypatch)
    assert whole and whole == parts
    assert len({f.rule for f in whole}) >= 3, {f.rule for f in whole}


@pytest.mark.parametrize("tail,expect", [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: bad\nspec: {}\n", "YAML syntax error"),
    ("apiVersion: v1\nkind: Pod\nmetadata: [not, a, map]\nspec: {}\n", "metadata"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, ports: {a: 1}}]}\n", "ports"),
])
def test_an_error_in_a_late_part_is_reported_at_its_line(tmp_path: Path, monkeypatch, tail: str, expect: str):
    path = tmp_path / "bad.yaml"
    path.write_text(objects(200) + "---\n" + tail)
    whole, parts = both(path, monkeypatch)
    assert isinstance(whole, list) and whole and all(isinstance(x, str) for x in whole), whole
    assert any(expect in x for x in whole), whole
    assert parts == whole
    line = int(whole[0].split(":")[1])
    assert line > path.read_text().count("\n") - 5     # the line in the file, not in its part


def test_split_cuts_only_at_document_starts():
    text = "a: |\n  ---\n  x\n---\nb: 1\n--- |\n  y\n---\nc: 2\n"
    parts = split_documents(text, 3)
    assert "".join(p for _, p in parts) == text
    assert all(p.startswith("---") for _, p in parts[1:])
    assert [o for o, _ in parts] == [text[:text.index(p)].count("\n") for _, p in parts]
    assert split_documents("%YAML 1.1\n---\na: 1\n---\nb: 2\n", 2) == [(0, "%YAML 1.1\n---\na: 1\n---\nb: 2\n")]


def test_map_forked_returns_results_in_order_and_runs_in_other_processes():
    pids = proc.map_forked(_pid_and, [(i,) for i in range(4)])
    assert [i for i, _ in pids] == [0, 1, 2, 3]
    if proc.workers() > 1:
        assert os.getpid() not in {pid for _, pid in pids}


def _pid_and(i: int) -> tuple[int, int]:
    return i, os.getpid()
