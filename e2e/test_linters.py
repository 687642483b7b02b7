"""kube-score and checkov on the rendered Kubernetes output of every example stack: no finding outside the allowlist
(tests/linters-allowlist.yaml, where each accepted finding gives its reason), and no allowlist entry left unused.

The tools come from e2e/setup.d/40-linters.sh (cached under ~/.cache/hybridorch); without them this test skips
locally and fails in CI (HYBRIDORCH_E2E=1).
"""
from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import ROOT, require
from hybridorch.api import render
from hybridorch.core.labels import LABEL_RUNTIME, LABEL_WORKLOAD

# resolved at import: the fast tests' fixtures point HOME elsewhere while a test runs
CACHE = Path.home() / ".cache" / "hybridorch"
KUBE_SCORE = CACHE / "bin" / "kube-score"
CHECKOV = CACHE / "venvs" / "checkov" / "bin" / "checkov"
ALLOWLIST = ROOT / "tests" / "linters-allowlist.yaml"
SETUP_HINT = "run e2e/setup.d/40-linters.sh"


def example_stacks() -> list[Path]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "Stack":
            out.append(path)
    return out


@dataclass(frozen=True)
class Finding:
    tool: str
    check: str
    kind: str
    namespace: str
    name: str
    runtime: str
    message: str

    @property
    def object(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.tool} {self.check} {self.object} (runtime {self.runtime or '-'}): {self.message}"


def runtimes(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """(kind, namespace, name) -> the runtime of the workload the object belongs to ('' for tenant objects)."""
    by_workload = {(d["metadata"].get("namespace", ""), d["metadata"]["labels"].get(LABEL_WORKLOAD)):
                   d["metadata"]["labels"].get(LABEL_RUNTIME, "") for d in docs}
    out = {}
    for d in docs:
        meta = d["metadata"]
        runtime = meta.get("labels", {}).get(LABEL_RUNTIME, "")
        if not runtime and d["kind"] == "NetworkPolicy":   # allow-<workload> selects that workload's pods
            selected = (d["spec"]["podSelector"].get("matchLabels") or {}).get(LABEL_WORKLOAD)
            runtime = by_workload.get((meta.get("namespace", ""), selected), "")
        out[(d["kind"], meta.get("namespace", ""), meta["name"])] = runtime
    return out


def kube_score(files: list[Path], index: dict[tuple[str, str, str], str]) -> list[Finding]:
    proc = subprocess.run([str(KUBE_SCORE), "score", "-o", "json", *map(str, files)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr   # 1: there are critical findings
    objects = json.loads(proc.stdout)
    scored = {(o["type_meta"]["kind"], o["object_meta"].get("namespace") or "", o["object_meta"]["name"])
              for o in objects}
    # kube-score scores these kinds (not Namespace, LimitRange, ResourceQuota, RuntimeClass or KubeVirt's VM)
    expected = {k for k in index if k[0] in ("Deployment", "StatefulSet", "Service", "NetworkPolicy",
                                             "PodDisruptionBudget")}
    assert expected <= scored <= set(index), "kube-score did not read every rendered object"
    out = []
    for obj in objects:
        kind, meta = obj["type_meta"]["kind"], obj["object_meta"]
        key = (kind, meta.get("namespace") or "", meta["name"])
        for check in obj["checks"]:
            if check["skipped"] or check["grade"] >= 10:   # 10 is "all OK"; 1 critical, 5 warning
                continue
            message = "; ".join(c["summary"] for c in check.get("comments") or []) or check["check"]["name"]
            out.append(Finding("kube-score", check["check"]["id"], *key, index.get(key, ""), message))
    return out


def checkov(directory: Path, index: dict[tuple[str, str, str], str]) -> list[Finding]:
    proc = subprocess.run([str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "-o", "json",
                           "--compact", "--skip-download", "--soft-fail"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert reports and all(r.get("check_type") == "kubernetes" for r in reports), proc.stdout[:500]
    assert sum(r["summary"]["passed"] for r in reports) > 0, "checkov checked nothing"
    out = []
    for report in reports:
        for failed in report["results"]["failed_checks"]:
            parts = failed["resource"].split(".", 2)   # Kind.namespace.name
            kind, namespace, name = parts if len(parts) == 3 else (parts[0], "", parts[-1])
            key = (kind, namespace if (kind, namespace, name) in index else "", name)
            out.append(Finding("checkov", failed["check_id"], *key, index.get(key, ""), failed["check_name"]))
    return out


def allowed(finding: Finding, entry: dict[str, Any]) -> bool:
    return (entry["tool"] == finding.tool and fnmatch.fnmatchcase(finding.check, entry["check"])
            and fnmatch.fnmatchcase(finding.object, entry["object"])
            and ("runtimes" not in entry or finding.runtime in entry["runtimes"]))


def test_allowlist_entries_are_complete():
    entries = yaml.safe_load(ALLOWLIST.read_text())["entries"]
    assert entries
    for entry in entries:
        assert set(entry) <= {"tool", "check", "object", "runtimes", "reason"}, entry
        assert entry["tool"] in ("kube-score", "checkov") and entry["check"] and entry["object"].count("/") == 2
        assert len(entry["reason"].split()) >= 8, f"say why: {entry}"


def test_rendered_examples_pass_kube_score_and_checkov(tmp_path: Path):
    require(KUBE_SCORE.is_file(), f"kube-score not installed at {KUBE_SCORE} ({SETUP_HINT})")
    require(CHECKOV.is_file(), f"checkov not installed at {CHECKOV} ({SETUP_HINT})")
    stacks = example_stacks()
    assert len(stacks) >= 3, stacks
    docs: list[dict[str, Any]] = []
    files = []
    for stack in stacks:
        rendered = render(str(stack))
        docs += rendered.documents
        files.append(tmp_path / f"{stack.stem}.yaml")
        files[-1].write_text(rendered.stream())
    index = runtimes(docs)
    findings = kube_score(files, index) + checkov(tmp_path, index)
    entries = yaml.safe_load(ALLOWLIST.read_text())["entries"]
    unexplained = [str(f) for f in findings if not any(allowed(f, e) for e in entries)]
    unused = [f"{e['tool']} {e['check']} {e['object']}" for e in entries if not any(allowed(f, e) for f in findings)]
    print(f"{len(findings)} findings on {len(docs)} objects of {len(stacks)} stacks, "
          f"{len(unexplained)} not allowlisted")
    assert not unexplained, "findings not in tests/linters-allowlist.yaml (fix the template, or add an entry " \
                            "with the reason):\n" + "\n".join(sorted(set(unexplained)))
    assert not unused, "allowlist entries no finding needs any more (remove them):\n" + "\n".join(unused)


def test_a_new_finding_is_reported(tmp_path: Path):
    """The gate can fail: a Deployment without the secure defaults produces findings the allowlist does not cover."""
    require(KUBE_SCORE.is_file(), f"kube-score not installed at {KUBE_SCORE} ({SETUP_HINT})")
    rendered = render(str(ROOT / "examples" / "shop.yaml"))
    web = next(d for d in rendered.documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "web")
    bad = json.loads(json.dumps(web))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    del container["securityContext"]["readOnlyRootFilesystem"]
    del container["resources"]["limits"]["ephemeral-storage"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    findings = kube_score([path], runtimes([bad]))
    entries = yaml.safe_load(ALLOWLIST.read_text())["entries"]
    checks = {f.check for f in findings if not any(allowed(f, e) for e in entries)}
    assert {"container-security-context-readonlyrootfilesystem", "container-ephemeral-storage-request-and-limit"} \
        <= checks, checks
