"""Malformed and hostile input, through the CLI: one line per problem, exit 2, no traceback, nothing disclosed,
nothing that blocks or runs for long. One table row per input named in issue 10 (and the checks added for it)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridorch.cli import cli
from hybridorch.core.safeload import MAX_INPUT_BYTES

ERROR_LINE = re.compile(r"^[^:]+(:\d+)?: .+")
HEAD = "apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\nmetadata: {name: demo}\nspec:\n"
SECRET = "s3cr3t-Pa55word-that-must-not-appear"


def stack(workloads: str, extra: str = "") -> str:
    return HEAD + extra + "  workloads:\n" + workloads


def cli_errors(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run the CLI (exceptions propagate: a traceback fails the test) and return its error lines after checking
    the contract every bad input shares: exit 2, only one-line `FILE[:LINE]: reason` lines on stderr."""
    started = time.monotonic()
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert time.monotonic() - started < 10, "bad input must fail fast"
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert lines and all(ERROR_LINE.match(ln) for ln in lines), lines
    assert "Traceback" not in result.output
    return lines


def write(path: Path, data: str | bytes) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


BOMB = "".join(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}" if i else "a"] * 9) + "]\n" for i in range(9))
DEEP_USER_DATA = '"#cloud-config\\na: ' + "[" * 200 + "]" * 200 + '"'
USER_DATA_BOMB = '"#cloud-config\\n' + BOMB.replace("\n", "\\n").replace('"', '\\"') + '"'

# (file content, words the error must contain)
STACKS: list[tuple[str | bytes, str]] = [
    (b"\xff\xfe\x00a\x00p\x00i", "is a binary file"),
    (HEAD.encode() + b"  workloads: [{name: caf\xe9, image: x}]\n", ":5: is not UTF-8 text"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "is a binary file"),
    (stack('    - {name: web, image: x, resources: {cpu: "1e400"}}\n'), "resources.cpu: not a valid CPU quantity"),
    (stack('    - {name: web, image: x, resources: {cpu: 1e99999999}}\n'), "not a valid CPU quantity"),
    (stack('    - {name: web, image: x, resources: {cpu: "1e99"}}\n'), "resources.cpu: out of range"),
    (stack('    - {name: web, image: x, resources: {memory: 99999999999999999999Ei}}\n'), "resources.memory: out of range"),
    (stack("    - {name: web, image: x, replicas: " + "9" * 5000 + "}\n"), "replicas: out of range (0 to 1000)"),
    (stack("    - {name: web, image: x, replicas: !!int abc}\n"), "replicas: expected an integer, got text"),
    (stack("    - {name: web, image: x, replicas: 2024-13-45}\n"), "replicas: expected an integer, got text"),
    (stack("    - {name: web, image: x}\n", "  hosts: [{name: tiny, cpu: 1m}]\n"), "cpu: must be at least 100m"),
    (stack("    - {name: web, image: x}\n", "  hosts: [{name: tiny, memory: 1Ki}]\n"), "memory: must be at least 64Mi"),
    (stack("    - {name: web, runtime: vm, vm: {userData: " + DEEP_USER_DATA + "}}\n"), "nested deeper than 32"),
    (stack("    - {name: web, runtime: vm, vm: {userData: " + USER_DATA_BOMB + "}}\n"), "aliases expand"),
    (stack('    - {name: web, runtime: vm, vm: {userData: "packages: [a]"}}\n'), "starting with `#cloud-config`"),
    (stack('    - {name: web, runtime: vm, vm: {userData: "#cloud-config\\n- a"}}\n'), "must be a YAML mapping"),
    (stack('    - {name: web, runtime: vm, vm: {userData: "#cloud-config\\na: !!int x"}}\n'), "cannot be read"),
    (stack('    - {name: web, runtime: vm, vm: {userData: "#cloud-config\\n' + "a" * 70000 + '"}}\n'),
     "larger than 64 KiB"),
    (HEAD + "  workloads: " + "[" * 100000 + "\n", "nested deeper than 64 levels"),
    (HEAD + BOMB.replace("\n", "\n  ").replace("x0", "  x0", 1) + "workloads: []\n", "aliases expand"),
    (HEAD + "  workloads: &w [{name: a, image: x, env: *w}]\n", "alias refers to a collection that contains it"),
    (HEAD + "  workloads: *nowhere\n", "alias names no anchor"),
    (stack("    - {name: web, image: x}\n") + "---\nkind: Stack\n", ":7: expected one YAML document, found several"),
    ("- just\n- a list\n", "not a hybridorch Stack file"),
    ("just text " + SECRET + "\n", "not a hybridorch Stack file"),
    ("", "the file is empty"),
    (stack("    - {name: web, image: x, env: {[a]: b}}\n"), "env: a key must be text, not a list"),
    (stack('    - {name: web, image: x, env: {"A\\nB": c}}\n'), "env: invalid key: a key must be an environment variable name"),
    # names and values as Kubernetes and the engines will see them
    (stack("    - {name: 9web, image: x, ports: [80]}\n"), "whose name must start with a letter (DNS-1035)"),
    (stack("    - {name: web, image: x, ports: [{port: 80, name: http-service-long}]}\n"), "IANA service name"),
    (stack("    - {name: web, image: x, ports: [{port: 80, name: '8080'}]}\n"), "IANA service name"),
    (stack("    - {name: web, image: x, ports: [{port: 80, name: a--b}]}\n"), "IANA service name"),
    (stack("    - {name: web, image: x, ports: [{port: 80, name: web}, {port: 81, name: web}]}\n"),
     "ports[1].name: the port name is already used by spec.workloads[0].ports[0]"),
    (stack('    - {name: web, image: x, labels: {team: "a\\n---\\nkind: Secret"}}\n'), "labels: must be a label value"),
    (stack("    - {name: web, image: x, labels: {team: " + "a" * 64 + "}}\n"), "labels: must be a label value"),
    (stack("    - {name: web, image: x, labels: {'Bad_Prefix/x': y}}\n"), "labels: invalid key: a key must be a label key"),
    (stack("    - {name: web, runtime: vm, replicas: 3}\n    - {name: web-1, image: x}\n"),
     "spec.workloads[1].name: also the name of a VM of spec.workloads[0] (its 3 replicas'"),
    (stack("    - {name: " + "w" * 62 + ", runtime: vm, replicas: 10}\n"), "longer than 63 characters"),
    (stack("    - {name: win, os: windows, image: x}\n"), "a windows VM needs vm.disk.image or vm.disk.pvc"),
    (stack("    - {name: web, runtime: vm, vm: {machine: 'q35\"/><devices>'}}\n"), "vm.machine: must be a machine type"),
    (stack("    - {name: web, image: --privileged}\n"), "image: must be an image reference"),
    (stack("    - {name: web, image: x, command: [--rm]}\n"), "command[0]: starts with '-': it would be read as an option"),
    (stack("    - {name: n, containers: [{name: c, image: -v/:/host}]}\n"), "containers[0].image: must be an image reference"),
    (stack("    - {name: n, containers: [{name: c, image: busybox, command: [-e]}]}\n"),
     "containers[0].command[0]: starts with '-'"),
    (stack("    - {name: web, image: 'hybridorch.local/../../etc:1'}\n"), "spec.workloads[0].image: must be an image reference"),
    (stack("    - {name: web, image: x, vm: {disk: {image: -x}}}\n"), "vm.disk.image: must be an image reference"),
]


@pytest.mark.parametrize("content,words", STACKS, ids=[str(i) for i in range(len(STACKS))])
def test_bad_stack_is_one_line_per_problem(tmp_path: Path, content: str | bytes, words: str) -> None:
    path = write(tmp_path / "stack.yaml", content)
    for command in (["validate"], ["plan"], ["render", "--out", "-"]):
        lines = cli_errors(*command, path)
        assert any(words in ln for ln in lines), lines
        assert not any(SECRET in ln for ln in lines)


def test_vm_replica_names_are_fine_when_nothing_collides(tmp_path: Path) -> None:
    path = write(tmp_path / "stack.yaml", stack("    - {name: web, runtime: vm, replicas: 3}\n"
                                                "    - {name: web-3, image: x}\n    - {name: web-01, image: x}\n"))
    result = CliRunner().invoke(cli, ["validate", path], catch_exceptions=False)
    assert result.exit_code == 0, result.output


# --- files that are not files, or too big ----------------------------------------------------------------------

def special_files(tmp_path: Path) -> dict[str, str]:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(MAX_INPUT_BYTES + 1)  # sparse: the size alone must refuse it, nothing is read
    (tmp_path / "dir.yaml").mkdir()
    return {"a FIFO": str(fifo), "a directory": str(tmp_path / "dir.yaml"), "a device": "/dev/zero",
            f"larger than the {MAX_INPUT_BYTES // 2**20} MiB input limit": str(big)}


@pytest.mark.parametrize("role", ["stack", "--hosts", "HYBRIDORCH_HOSTS", "--policy", "HYBRIDORCH_PLAN_POLICY",
                                  "soc-test"])
def test_only_regular_files_of_bounded_size_are_read(tmp_path: Path, role: str) -> None:
    good = write(tmp_path / "good.yaml", stack("    - {name: web, image: x}\n"))
    for what, path in special_files(tmp_path).items():
        args, env = {
            "stack": (["validate", path], None),
            "--hosts": (["--hosts", path, "plan", good], None),
            "HYBRIDORCH_HOSTS": (["plan", good], {"HYBRIDORCH_HOSTS": path}),
            "--policy": (["plan", "--policy", path, good], None),
            "HYBRIDORCH_PLAN_POLICY": (["plan", good], {"HYBRIDORCH_PLAN_POLICY": path}),
            "soc-test": (["soc-test", path], None),
        }[role]
        lines = cli_errors(*args, env=env)
        assert lines == [f"{path}: " + ("cannot read file: it is " + what + ", not a regular file"
                                        if what.startswith("a ") else "file is " + what)], lines


BINARY_PLAN = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))


@pytest.mark.parametrize("role,content,words", [
    ("soc-test", BINARY_PLAN, "is a binary file"),
    ("soc-test", b"apiVersion: hybridorch.dev/v1alpha1\nkind: SocTest\nmetadata: {name: \xff}\n", ":3: is not UTF-8"),
    ("--policy", "apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\n"
                 "spec: {overheads: {vm: {cpu: 1e400, memory: 1Gi}}}\n", "overheads.vm.cpu: not a valid CPU quantity"),
    ("--policy", "apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\n"
                 "spec: {overheads: {vm: {cpu: '1', memory: 1e99}}}\n", "overheads.vm.memory: out of range"),
    ("--hosts", "apiVersion: hybridorch.dev/v1alpha1\nkind: Hosts\nmetadata: {name: h}\n"
                "spec: {pools: [{name: p, cpu: 1m}]}\n", "spec.pools[0].cpu: must be at least 100m"),
    ("--hosts", "apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\n", "not a hybridorch Hosts file"),
])
def test_bad_side_files(tmp_path: Path, role: str, content: str | bytes, words: str) -> None:
    path = write(tmp_path / "side.yaml", content)
    good = write(tmp_path / "good.yaml", stack("    - {name: web, image: x}\n"))
    args = {"soc-test": ["soc-test", path], "--policy": ["plan", "--policy", path, good],
            "--hosts": ["--hosts", path, "plan", good]}[role]
    lines = cli_errors(*args)
    assert any(words in ln for ln in lines), lines


# --- no file disclosure ------------------------------------------------------------------------------------------

SECRETS = {
    "shadow": f"root:$6${SECRET}:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n",
    "env": f"DATABASE_PASSWORD={SECRET}\nAPI_KEY=abc\n",
    "key": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n-----END OPENSSH PRIVATE KEY-----\n",
    "yaml": f"password: {SECRET}\n{SECRET}: 1\n",
    "yaml-list": f"- {SECRET}\n",
    "almost": f"apiVersion: v1\nkind: Secret\ndata: {{{SECRET}: {SECRET}}}\n",
    "broken": f"a: [{SECRET}\n",
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_a_stack_cannot_name_a_file_outside_its_directory(tmp_path: Path, kind: str) -> None:
    secret = write(tmp_path / "secret.txt", SECRETS[kind])
    (tmp_path / "stacks").mkdir()
    os.symlink(secret, tmp_path / "stacks" / "link.yaml")
    for ref in ("../secret.txt", secret, "link.yaml", "./../stacks/../secret.txt"):
        path = write(tmp_path / "stacks" / "s.yaml", stack("    - {name: web, image: x}\n", f"  policy: {ref}\n"))
        lines = cli_errors("plan", path)
        assert lines == [f"{path}:5: spec.policy: the policy file is outside the stack's directory (an absolute "
                         "path, '..' or a symlink out of it): keep it beside the stack, or pass --policy"]


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_files_that_are_not_hybridorch_documents_are_not_quoted(tmp_path: Path, kind: str) -> None:
    secret = write(tmp_path / "secret.txt", SECRETS[kind])
    (tmp_path / "stacks").mkdir()
    os.symlink(secret, tmp_path / "stacks" / "inside.yaml")  # a file inside the directory that is not a policy
    write(tmp_path / "stacks" / "copy.yaml", SECRETS[kind])
    good = write(tmp_path / "good.yaml", stack("    - {name: web, image: x}\n"))
    in_stack = write(tmp_path / "stacks" / "s.yaml", stack("    - {name: web, image: x}\n", "  policy: copy.yaml\n"))
    for args in (["plan", "--policy", secret, good], ["--hosts", secret, "plan", good], ["validate", secret],
                 ["soc-test", secret], ["plan", in_stack], ["render", "--out", "-", secret]):
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 2 and SECRET not in result.output, (args, result.output)
        assert all(ERROR_LINE.match(ln) for ln in result.stderr.splitlines())


def test_user_may_name_any_policy_file_on_the_command_line(tmp_path: Path) -> None:
    policy = write(tmp_path / "policy.yaml", "apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\n"
                                             "metadata: {name: strict}\nspec: {base: secure}\n")
    (tmp_path / "stacks").mkdir()
    path = write(tmp_path / "stacks" / "s.yaml", stack("    - {name: web, image: x}\n", "  policy: ../policy.yaml\n"))
    result = CliRunner().invoke(cli, ["plan", "--policy", policy, "-o", "json", path], catch_exceptions=False)
    assert result.exit_code == 0 and '"policy": "strict"' in result.output
    write(tmp_path / "stacks" / "mine.yaml", open(policy).read())
    inside = write(tmp_path / "stacks" / "t.yaml", stack("    - {name: web, image: x}\n", "  policy: mine.yaml\n"))
    result = CliRunner().invoke(cli, ["plan", "-o", "json", inside], catch_exceptions=False)
    assert result.exit_code == 0 and '"policy": "strict"' in result.output


def test_soc_rootfs_stays_beside_the_plan(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.yaml", "apiVersion: hybridorch.dev/v1alpha1\nkind: SocTest\nmetadata: {name: p}\n"
                                         "spec:\n  target: {arch: arm64}\n  containers:\n"
                                         "    - {name: t, rootfs: /etc, command: [cat, shadow]}\n")
    lines = cli_errors("soc-test", plan)
    assert lines == [f"{plan}:7: spec.containers[0].rootfs: outside the plan's directory (an absolute "
                     "path, '..' or a symlink out of it)"]


@pytest.mark.parametrize("prefix,words", [("Bad_", "must be lowercase letters"), ("-x", "must be lowercase letters"),
                                          ("p" * 60, "longer than 63 characters")])
def test_namespace_prefix_is_checked(tmp_path: Path, prefix: str, words: str) -> None:
    path = write(tmp_path / "s.yaml", stack("    - {name: web, image: x}\n"))
    lines = cli_errors("render", "--out", "-", "--namespace-prefix", prefix, path)
    assert len(lines) == 1 and lines[0].startswith("--namespace-prefix: ") and words in lines[0], lines
