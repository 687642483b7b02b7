"""The kubeconfig goes through the safe reader (backends/kubeconfig.py): which files kubectl would read, and a bad
one (a FIFO, a device, a bomb, no kubeconfig at all) refused with exit 2 in one line naming the file, quoting
nothing of it, before kubectl or the client reads it. Real files in tmp_path; no cluster is needed: the kubectl
the CLI runs is a script that logs its calls, to show that a refused file never reaches it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest

from hybridorch.backends import kube_soc, kubeconfig, kubewatch
from hybridorch.backends.kube_api import NO_CLUSTER
from hybridorch.backends.kubernetes import KubernetesBackend
from hybridorch.errors import BackendError, InputError

ROOT = Path(__file__).resolve().parent.parent
MARKER = "SECRET-kc-42"

VALID = textwrap.dedent(f"""\
    apiVersion: v1
    kind: Config
    clusters:
    - name: kind-demo
      cluster:
        server: https://127.0.0.1:6443
        certificate-authority-data: QUJDREVGRw==
        extensions:
        - name: client.authentication.k8s.io/exec
          extension: {{audience: demo, nested: {{deeper: [1, 2, {{x: y}}]}}}}
    - name: other
      cluster: {{server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true}}
    contexts:
    - name: kind-demo
      context: {{cluster: kind-demo, user: kind-demo, namespace: default}}
    - name: "5"
      context: {{cluster: other, user: kind-demo}}
    current-context: kind-demo
    preferences: {{}}
    users:
    - name: kind-demo
      user:
        token: {MARKER}
        exec:
          apiVersion: client.authentication.k8s.io/v1
          command: get-token
          args: [--cluster, demo]
          env: [{{name: A, value: b}}]
    """)
# what `kubectl config view` writes for an empty configuration
EMPTY_VIEW = 'apiVersion: v1\nclusters: null\ncontexts: null\ncurrent-context: ""\nkind: Config\npreferences: {}\n' \
             'users: null\n'


def _bomb() -> str:
    lines = [f'a0: &a0 ["{MARKER}", "{MARKER}"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 25)]
    return "\n".join(lines) + "\n"


# case -> (what makes the file in a directory and returns its path, words its one line of error must contain)
def _write(name: str, data: bytes | str) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        path = d / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)
    return make


def _fifo(d: Path) -> str:
    os.mkfifo(d / "fifo")
    return str(d / "fifo")


def _directory(d: Path) -> str:
    (d / "dir").mkdir()
    (d / "dir" / MARKER).write_text(MARKER)
    return str(d / "dir")


def _loop(d: Path) -> str:
    os.symlink(d / "loop-a", d / "loop-b")
    os.symlink(d / "loop-b", d / "loop-a")
    return str(d / "loop-a")


def _large(d: Path) -> str:
    path = d / "large"
    with open(path, "w") as f:
        f.write(f"users:\n- name: {MARKER}\n  user: {{token: {MARKER * 1000}}}\n" * 1700)
    assert path.stat().st_size > 20 * 10**6
    return str(path)


BAD = {
    "fifo": (_fifo, "it is a FIFO, not a regular file"),
    "directory": (_directory, "it is a directory, not a regular file"),
    "device": (lambda d: "/dev/zero", "it is a device, not a regular file"),
    "alias-bomb": (_write("bomb", _bomb()), "aliases expand to more than"),
    "deep-nesting": (_write("deep", "[" * 5000 + MARKER + "]" * 5000), "nested deeper than 32 levels"),
    "bad-yaml": (_write("bad", f"clusters:\n- name: a\n  {MARKER}: [\n  - : {{\n"), "YAML syntax error"),
    "list-at-top": (_write("list", f"- {MARKER}\n- b\n"), "a kubeconfig is a mapping"),
    "clusters-string": (_write("clusters", f'apiVersion: v1\nclusters: "{MARKER}"\n'),
                        ":2: clusters: must be a list of mappings with a name, not a string"),
    "context-name-number": (_write("ctx", f"contexts: [{{name: 5, context: {{cluster: {MARKER}}}}}]\n"),
                            ":1: contexts[0].name: must be a string, not a number"),
    "large": (_large, "larger than the 4 MiB limit of a kubeconfig"),
    "not-utf8": (_write("latin1", f"apiVersion: v1\nkind: {MARKER}\xe9\n".encode("latin-1")), ":2: is not UTF-8"),
    "symlink-loop": (_loop, "cannot read file:"),
    "nul-byte": (_write("binary", f"kind: {MARKER}\0\n".encode()), "is a binary file (a NUL byte), not a kubeconfig"),
    "user-not-mapping": (_write("user", f"users:\n- name: u\n  user: [{MARKER}]\n"),
                         ":3: users[0].user: must be a mapping, not a list"),
    "current-context-list": (_write("cur", f"current-context: [{MARKER}]\n"),
                             ":1: current-context: must be a string, not a list"),
}


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> tuple[str, Path]:
    """A kubectl that logs its arguments and answers an empty list (ps lists nothing)."""
    log = tmp_path / "kubectl.log"
    exe = tmp_path / "bin" / "kubectl"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho '{{\"items\": []}}'\n")
    exe.chmod(0o755)
    return str(exe), log


def _ps(kubeconfig_env: str, kubectl: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig_env, "HYBRIDORCH_KUBECTL": kubectl}
    return subprocess.run([sys.executable, "-m", "hybridorch", "ps", "--target", "kubernetes"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_kubeconfig_is_one_line_exit_2_naming_the_file_and_quoting_nothing(
        case: str, tmp_path: Path, fake_kubectl: tuple[str, Path]) -> None:
    make, expected = BAD[case]
    files = tmp_path / "files"
    files.mkdir()
    path = make(files)
    started = time.monotonic()
    done = _ps(path, fake_kubectl[0])
    assert time.monotonic() - started < 10
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}") and expected in lines[0], lines[0]
    assert lines[0].endswith("(kubeconfig from KUBECONFIG)")
    assert MARKER not in done.stdout + done.stderr
    assert not fake_kubectl[1].exists(), "kubectl ran on a refused kubeconfig"


def test_empty_and_missing_entries_of_a_kubeconfig_list_are_skipped_and_a_bad_one_is_named(
        tmp_path: Path, fake_kubectl: tuple[str, Path]) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(VALID)
    bad.write_text(f"- {MARKER}\n")
    missing = tmp_path / "missing"
    done = _ps(os.pathsep.join(["", str(missing), str(good), "", str(bad), ""]), fake_kubectl[0])
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: {bad}:1: a kubeconfig is a mapping (apiVersion, clusters, contexts, users), not a list "
        "(kubeconfig from KUBECONFIG)"]
    assert MARKER not in done.stdout + done.stderr and not fake_kubectl[1].exists()

    done = _ps(os.pathsep.join(["", str(missing), str(good), ""]), fake_kubectl[0])
    assert done.returncode == 0, done.stderr
    assert MARKER not in done.stdout + done.stderr
    assert "get jobs.batch" in fake_kubectl[1].read_text()   # the check passed: kubectl ran


def test_a_missing_kubeconfig_is_still_no_cluster_configured(tmp_path: Path) -> None:
    # KUBECONFIG names no file that exists: kubectl's own defaults (in-cluster, localhost) decide, as before
    assert kubeconfig.kubeconfig_files() == []
    kubeconfig.check_kubeconfig()
    with pytest.raises(BackendError) as err:
        kubeconfig.check_kubeconfig(str(tmp_path / "absent"))
    assert str(err.value) == NO_CLUSTER
    with pytest.raises(BackendError) as err:
        kubewatch.api_client(str(tmp_path / "absent"), None)
    assert str(err.value) == NO_CLUSTER


# --- which files kubectl reads ----------------------------------------------------------------------------------

def test_the_files_are_those_kubectl_reads(tmp_path: Path, isolated_home: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(VALID)
    b.write_text(VALID)
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(["", str(a), str(tmp_path / "no"), str(b), str(a), ""]))
    found = kubeconfig.kubeconfig_files()
    assert [f.path for f in found] == [str(a), str(b)] and {f.source for f in found} == {"kubeconfig from KUBECONFIG"}
    # an explicit path (kubectl --kubeconfig) wins over KUBECONFIG
    assert [f.path for f in kubeconfig.kubeconfig_files(str(b))] == [str(b)]
    # a KUBECONFIG of only empty entries replaces the default file, as in kubectl
    default = isolated_home / ".kube" / "config"
    default.parent.mkdir()
    default.write_text(VALID)
    monkeypatch.setenv("KUBECONFIG", os.pathsep)
    assert kubeconfig.kubeconfig_files() == []
    for unset in (True, False):   # unset or empty: ~/.kube/config
        if unset:
            monkeypatch.delenv("KUBECONFIG")
        else:
            monkeypatch.setenv("KUBECONFIG", "")
        assert [(f.path, f.source) for f in kubeconfig.kubeconfig_files()] == [(str(default), "default kubeconfig")]
    # a dangling symlink is a missing file (kubectl skips it); a symlink loop is kept for the check to refuse
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "dangling"), str(tmp_path / "loop")]))
    assert [(f.path, f.signature) for f in kubeconfig.kubeconfig_files()] == [(str(tmp_path / "loop"), None)]


# --- the check --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [VALID, EMPTY_VIEW, "", "# only a comment\n", "~\n",
                                  '{"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "a", "cluster": '
                                  '{"server": "https://h:1"}}], "contexts": [], "users": []}',
                                  "\ufeffapiVersion: v1\nclusters:\n- name: a\n  cluster: null\n"])
def test_a_valid_kubeconfig_passes(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(path))
    kubeconfig.check_kubeconfig()
    kubeconfig.check_kubeconfig(str(path))


@pytest.mark.parametrize("text, line", [
    ("clusters:\n- name: a\n- cluster: {}\n", "x:3: clusters[1]: has no name"),
    ("clusters: [a]\n", "x:1: clusters[0]: must be a mapping with a name, not a string"),
    ("users: {name: a}\n", "x:1: users: must be a list of mappings with a name, not a mapping"),
    ("apiVersion: 1\n", "x:1: apiVersion: must be a string, not a number"),
    ("kind: yes\n", "x:1: kind: must be a string, not true/false"),
    ("contexts:\n- name: null\n", "x:2: contexts[0].name: must be a string, not null"),
    ("contexts:\n- name: c\n  context: 2020-01-01\n", "x:3: contexts[0].context: must be a mapping, not a timestamp"),
    ("just text\n", "x:1: a kubeconfig is a mapping (apiVersion, clusters, contexts, users), not a string"),
])
def test_the_shape_check_names_line_and_field(text: str, line: str) -> None:
    from hybridorch.core.safeload import compose_yaml

    assert str(kubeconfig.shape_problem(compose_yaml(text, "x"), "x")) == line


def test_the_verdict_is_kept_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config"
    path.write_text(VALID)
    monkeypatch.setenv("KUBECONFIG", str(path))
    reads: list[str] = []
    real = kubeconfig.read_input
    monkeypatch.setattr(kubeconfig, "read_input", lambda p, what: reads.append(p) or real(p, what))
    for _ in range(3):
        kubeconfig.check_kubeconfig()
    assert reads == [str(path)]
    path.write_text(f"- {MARKER}\n")   # another size and mtime
    with pytest.raises(InputError):
        kubeconfig.check_kubeconfig()


def test_the_backend_checks_before_its_first_kubectl_and_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   fake_kubectl: tuple[str, Path]) -> None:
    monkeypatch.setenv("HYBRIDORCH_KUBECTL", fake_kubectl[0])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("KUBECONFIG", str(fifo))
    backend = KubernetesBackend()
    with pytest.raises(InputError, match="it is a FIFO"):
        backend.kubectl_command("get", "pods")
    good = tmp_path / "good"
    good.write_text(VALID)
    monkeypatch.setenv("KUBECONFIG", str(good))
    checks: list[str | None] = []
    monkeypatch.setattr("hybridorch.backends.kubernetes.check_kubeconfig", checks.append)
    backend = KubernetesBackend()
    for _ in range(3):
        assert backend.kubectl_command("get", "pods")[0] == fake_kubectl[0]
    assert checks == [None]


def test_the_api_client_and_soc_test_jobs_refuse_a_fifo_without_waiting(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("KUBECONFIG", str(fifo))
    with pytest.raises(InputError, match=f"^{fifo}: cannot read file: it is a FIFO"):
        kubewatch.api_client(None, None)
    with pytest.raises(InputError, match="it is a FIFO"):
        kubewatch.api_client(str(fifo), "some-context")
    with pytest.raises(InputError, match="it is a FIFO") as err:
        kube_soc.run_boards(KubernetesBackend(), [], parallel=1, ttl="1h")
    assert str(err.value).endswith("(kubeconfig from KUBECONFIG)")


def test_a_certificate_or_token_file_that_is_no_regular_file_is_refused(tmp_path: Path) -> None:
    """kubectl reads the files a kubeconfig names too: a FIFO there would make it wait forever."""
    from hybridorch.backends.kubeconfig import KubeconfigFile, check_file

    os.mkfifo(tmp_path / "ca.fifo")
    (tmp_path / "ca.crt").write_text("not checked: kubectl says what is wrong with a certificate\n")
    config = ("clusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:1', certificate-authority: {ca}}}\n"
              "users:\n- name: u\n  user: {{tokenFile: {token}}}\n")
    good = tmp_path / "good"
    good.write_text(config.format(ca="ca.crt", token="missing-is-kubectls-to-say"))
    check_file(KubeconfigFile(str(good), "test", None))
    for ca, token, field in [("ca.fifo", "ca.crt", "clusters[0].cluster.certificate-authority"),
                             ("ca.crt", "/dev/zero", "users[0].user.tokenFile")]:
        bad = tmp_path / "bad"
        bad.write_text(config.format(ca=ca, token=token))
        with pytest.raises(InputError, match=re.escape(field) + ": names a file that is not a regular file"):
            check_file(KubeconfigFile(str(bad), "test", None))
