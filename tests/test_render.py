"""Rendering: golden files for the examples, schema validity, injection safety, template overrides and errors.

Refresh every golden file and manifests/ after an intended change with one command:

    HYBRIDORCH_REFRESH_GOLDEN=1 python3 -m pytest tests/test_render.py
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from click.testing import CliRunner

from hybridorch.render import validate
from hybridorch.api import plan_stack, render
from tests.conftest import require
from hybridorch.cli import cli
from hybridorch.errors import OutputError, RenderError
from hybridorch.core.labels import LABEL_MANAGED, LABEL_RUNTIME, LABEL_STACK
from hybridorch.core.policy import PROFILES
from hybridorch.render.sandbox import unit_arg, yaml_value
from hybridorch.render.stack import RUNTIME_CLASS, render_plan, runtime_class_objects
from hybridorch.render.writer import Rendered, RenderedFile, dump_yaml
from tests.conftest import ROOT

EXAMPLES = ["shop", "legacy-windows", "soc-rig"]
GOLDEN = ROOT / "tests" / "golden"
REFRESH = os.environ.get("HYBRIDORCH_REFRESH_GOLDEN") == "1"
REFRESH_HINT = "refresh with: HYBRIDORCH_REFRESH_GOLDEN=1 python3 -m pytest tests/test_render.py"
CACHE = "/var/cache/hybridorch"   # fixed so local-target paths do not depend on HOME


def example(name: str) -> str:
    return str(ROOT / "examples" / f"{name}.yaml")


def render_example(name: str, target: str = "kubernetes") -> Rendered:
    return render_plan(plan_stack(example(name)), target=target, cache_dir=CACHE)


def check_against(expected_files: dict[str, str], directory: Path) -> None:
    """Compare (or with REFRESH, rewrite) a directory of expected files, stale extra files included."""
    if REFRESH:
        for old in directory.rglob("*") if directory.exists() else ():
            if old.is_file() and old.relative_to(directory).as_posix() not in expected_files:
                old.unlink()
        for rel, content in expected_files.items():
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            (directory / rel).write_text(content)
    present = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    assert present == sorted(expected_files), f"{directory}: files differ; {REFRESH_HINT}"
    for rel, content in expected_files.items():
        assert (directory / rel).read_text() == content, f"{directory / rel} is stale; {REFRESH_HINT}"


# --- golden files and manifests/ -------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("target", ["kubernetes", "local"])
def test_examples_match_golden_files(name: str, target: str):
    rendered = render_example(name, target)
    check_against({f.path: f.content for f in rendered.files}, GOLDEN / name / target)


def test_manifests_are_current():
    expected = {f"examples/{name}.yaml": render_example(name).stream() for name in EXAMPLES}
    expected["runtimeclasses.yaml"] = dump_yaml(runtime_class_objects(PROFILES["balanced"]))
    check_against(expected, ROOT / "manifests")


@pytest.mark.parametrize("name", EXAMPLES)
def test_output_is_deterministic(name: str, tmp_path: Path):
    first, second = render_example(name), render_example(name)
    assert first.stream() == second.stream()
    a, b = first.write(str(tmp_path / "a")), second.write(str(tmp_path / "b"))
    assert [Path(p).read_bytes() for p in a] == [Path(p).read_bytes() for p in b]


# --- what each runtime renders to ---------------------------------------------------------------------

def kinds(rendered: Rendered, workload: str) -> list[str]:
    return [d["kind"] for d in rendered.documents_by_workload()[workload]]


def test_every_rendered_object_passes_its_schema_and_carries_the_labels():
    for name in EXAMPLES:
        rendered = render_example(name)
        assert rendered.documents
        for doc in rendered.documents:
            assert validate.object_problems(doc) == [], (name, doc["kind"])
            labels = doc["metadata"]["labels"]
            assert labels[LABEL_MANAGED] == "hybridorch" and labels[LABEL_STACK] == rendered.stack
            if doc["kind"] not in ("Namespace", "NetworkPolicy", "LimitRange", "ResourceQuota"):
                assert LABEL_RUNTIME in labels, doc["kind"]
            if doc["kind"] not in ("Namespace", "RuntimeClass"):
                assert doc["metadata"]["namespace"]


def test_apply_order_namespaces_runtimeclasses_policy_then_workloads():
    order = [d["kind"] for d in render_example("shop").documents]
    assert order[:2] == ["Namespace", "Namespace"] and order[2] == "RuntimeClass"
    first_workload = min(order.index(k) for k in ("Deployment", "VirtualMachine"))
    assert max(order.index(k) for k in ("NetworkPolicy", "LimitRange", "ResourceQuota")) < first_workload


def test_schema_catches_a_misspelt_field_and_a_wrong_type():
    deployment = next(d for d in render_example("shop").documents if d["kind"] == "Deployment")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replicas"] = "two"
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    problems = validate.object_problems(bad)
    assert any("spec.replicas" in p for p in problems) and any("imagePullPolicyy" in p for p in problems)
    vm = next(d for d in render_example("shop").documents if d["kind"] == "VirtualMachine")
    vm = yaml.safe_load(yaml.safe_dump(vm))
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = "many"
    assert any("cores" in p for p in validate.object_problems(vm))


def test_container_is_restricted_with_requests_and_limits():
    web = next(d for d in render_example("shop").documents if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "web")
    pod = web["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["requests"] == c["resources"]["limits"] == {"cpu": "250m", "memory": "64Mi",
                                                                      "ephemeral-storage": "1Gi"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}
    assert web["spec"]["replicas"] == 2 and "runtimeClassName" not in pod


def test_secure_defaults_linters_ask_for():
    rendered = render_example("shop")
    by = rendered.documents_by_workload()
    web, pdb = by["web"][0], by["web"][1]
    pod = web["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "hybridorch-tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert pod["volumes"] == [{"name": "hybridorch-tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    assert c["livenessProbe"]["tcpSocket"] == c["readinessProbe"]["tcpSocket"] == {"port": 8080}
    assert c["livenessProbe"]["failureThreshold"] > 1
    assert pod["automountServiceAccountToken"] is False
    # replicas: a disruption budget and a spread over hosts (hard under balanced, which spreads replicas)
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"] == {"maxUnavailable": 1,
                                                                   "selector": web["spec"]["selector"]}
    assert pod["topologySpreadConstraints"] == [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                 "whenUnsatisfiable": "DoNotSchedule",
                                                 "labelSelector": web["spec"]["selector"]}]
    api = by["api"]
    assert [d["kind"] for d in api] == ["Deployment", "Service"]   # one replica: no budget, no spread
    assert "topologySpreadConstraints" not in api[0]["spec"]["template"]["spec"]
    # a locally built image by its content-derived tag, the one the Docker backend also builds
    from hybridorch.core import images
    assert c["image"] == images.content_ref("hybridorch.local/httpd:1", images.image_dirs(example("shop")))
    assert c["image"].startswith("hybridorch.local/httpd:1-") and c["imagePullPolicy"] == "IfNotPresent"
    limits = next(d for d in rendered.documents if d["kind"] == "LimitRange")["spec"]["limits"][0]
    assert limits["default"]["ephemeral-storage"] == limits["defaultRequest"]["ephemeral-storage"] == "1Gi"


def test_a_volume_at_tmp_replaces_the_scratch_dir_and_efficient_spreads_softly(write_stack: Callable[..., str]):
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: db}
        spec:
          policy: efficient
          workloads:
            - name: pg
              image: postgres:16
              replicas: 3
              volumes: [{name: scratch, mountPath: /tmp, size: 1Gi}]
    """)
    pg = render(path).documents_by_workload()["pg"][0]
    pod = pg["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    assert "volumes" not in pod and pod["containers"][0]["image"] == "postgres:16"
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"


def test_sandboxed_gets_runtime_class_with_overhead():
    rendered = render_example("shop")
    plugin = next(d for d in rendered.documents if d["metadata"]["name"] == "recommender-plugin"
                  and d["kind"] == "Deployment")
    assert plugin["spec"]["template"]["spec"]["runtimeClassName"] == RUNTIME_CLASS
    assert plugin["spec"]["template"]["spec"]["nodeSelector"]["hybridorch.dev/virtualization"] == "true"
    rc = next(d for d in rendered.documents if d["kind"] == "RuntimeClass")
    assert rc["overhead"]["podFixed"] == {"cpu": "250m", "memory": "160Mi"}


def test_vm_renders_kubevirt_vm_and_service():
    rendered = render_example("shop")
    assert kinds(rendered, "ledger-vm") == ["VirtualMachine", "Service"]
    vm = rendered.documents_by_workload()["ledger-vm"][0]
    spec = vm["spec"]["template"]["spec"]
    assert vm["spec"]["runStrategy"] == "Always"
    (disk,) = [v["containerDisk"] for v in spec["volumes"] if v["name"] == "rootdisk"]
    # the locally built disk by its content tag, as pods' images; it ships the kernel that boots it (kernelBoot)
    assert disk["image"].startswith("hybridorch.local/ledger-disk:1-") and disk["imagePullPolicy"] == "IfNotPresent"
    boot = spec["domain"]["firmware"]["kernelBoot"]
    assert boot["container"] == {"image": disk["image"], "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd.img",
                                 "imagePullPolicy": "IfNotPresent"}
    assert boot["kernelArgs"] == "root=/dev/vda rw console=ttyS0 panic=-1"   # what the local target boots it with
    # ready when the ledger's own service answers, not when QEMU started; a delete does not wait 180 s for a guest
    # that ignores ACPI
    assert spec["readinessProbe"]["tcpSocket"] == {"port": 8091}
    assert spec["terminationGracePeriodSeconds"] == 20
    assert spec["domain"]["resources"]["limits"] == {"cpu": "1", "memory": "256Mi"}
    assert spec["domain"]["devices"]["interfaces"][0]["ports"] == [{"name": "tcp-8091", "port": 8091,
                                                                    "protocol": "TCP"}]
    assert spec["nodeSelector"]["hybridorch.dev/virtualization"] == "true"
    assert spec["volumes"][1]["cloudInitNoCloud"]["userData"].startswith("#cloud-config\n")


def test_windows_vm_boots_from_its_pvc_without_cloud_init():
    vm = render_example("legacy-windows").documents_by_workload()["billing-win"][0]
    spec = vm["spec"]["template"]["spec"]
    assert spec["volumes"] == [{"name": "rootdisk", "persistentVolumeClaim": {"claimName": "billing-win-disk"}}]
    assert spec["domain"]["devices"]["disks"] == [{"name": "rootdisk", "disk": {"bus": "sata"}}]


def test_nested_vm_is_emulated_arm64_running_its_containers_as_units():
    rendered = render_example("soc-rig")
    vm = rendered.documents_by_workload()["board"][0]
    spec = vm["spec"]["template"]["spec"]
    assert spec["architecture"] == "arm64" and spec["nodeSelector"]["kubernetes.io/arch"] == "amd64"
    # no disk of its own: on a cluster too it boots the busybox guest the local target boots, its inner containers
    # under runc, from an image the kubernetes backend builds (named by what the guest runs); no cloud-init
    boot = spec["domain"]["firmware"]["kernelBoot"]
    assert re.fullmatch(r"hybridorch\.local/guest-soc-rig-board:[0-9a-f]{16}", boot["container"]["image"])
    assert boot["kernelArgs"] == "console=ttyAMA0 quiet loglevel=3 panic=-1 hyb.net=dhcp"
    assert "volumes" not in spec and "disks" not in spec["domain"]["devices"]
    assert spec["readinessProbe"]["tcpSocket"]["port"] == 9000   # the telemetry container's port
    ports = spec["domain"]["devices"]["interfaces"][0]["ports"]
    assert [x["port"] for x in ports] == [9000]
    # the same stack names the same guest image (the tag is a digest of what the guest runs)
    again = render_example("soc-rig")
    assert again.documents_by_workload()["board"][0]["spec"]["template"]["spec"]["domain"]["firmware"][
        "kernelBoot"]["container"]["image"] == boot["container"]["image"]   # deterministic
    local = render_example("soc-rig", "local")
    config = yaml.safe_load(local.file("board/user-data").content)
    assert [f["path"] for f in config["write_files"]] == ["/etc/systemd/system/hybridorch-sensor-daemon.service",
                                                          "/etc/systemd/system/hybridorch-telemetry.service"]
    xml = local.file("board/domain.xml").content
    assert '<domain type="qemu" ' in xml and 'arch="aarch64" machine="virt"' in xml


def test_tenant_gets_namespace_psa_policies_and_quota():
    rendered = render_example("shop", )
    docs = [d for d in rendered.documents if d["metadata"].get("namespace") == "shop" or
            (d["kind"] == "Namespace" and d["metadata"]["name"] == "shop")]
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # the declared port is open to the tenant's own pods only (tests/test_networkpolicy.py: allowFrom, public)
    assert policies["allow-web"]["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}],
                                                         "from": [{"podSelector": {}}]}]
    quota = next(d for d in docs if d["kind"] == "ResourceQuota")["spec"]["hard"]
    # web 2+1 x 250m, api 1+1 x 500m, plugin 1+1 x (250m + 250m sandbox overhead)
    assert quota["requests.cpu"] == "2750m" and quota["pods"] == "7"
    assert any(d["kind"] == "LimitRange" for d in docs)
    payments = next(d for d in rendered.documents if d["kind"] == "Namespace" and d["metadata"]["name"] == "payments")
    assert payments["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"  # runs a VM


def test_namespace_prefix(write_stack: Callable[..., str]):
    rendered = render(example("soc-rig"), namespace_prefix="ci-")
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in rendered.documents} == {"ci-firmware"}


def test_volumes_make_a_statefulset_and_privileged_under_efficient(write_stack: Callable[..., str]):
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: db}
        spec:
          policy: efficient
          workloads:
            - name: pg
              image: postgres:16
              ports: [5432]
              trust: trusted
              volumes: [{name: data, mountPath: /var/lib/postgresql/data, size: 5Gi}]
            - name: probe
              image: hybridorch.local/busybox:1
              trust: trusted
              requires: [privileged]
    """)
    rendered = render(path)
    pg = rendered.documents_by_workload()["pg"][0]
    assert pg["kind"] == "StatefulSet" and pg["spec"]["serviceName"] == "pg"
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {"storage": "5Gi"}
    probe = rendered.documents_by_workload()["probe"][0]["spec"]["template"]["spec"]
    assert probe["containers"][0]["securityContext"]["privileged"] is True
    assert "securityContext" not in probe
    ns = rendered.documents[0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    quota = next(d for d in rendered.documents if d["kind"] == "ResourceQuota")
    assert quota["spec"]["hard"]["requests.storage"] == "5Gi"


def test_every_container_gets_a_read_only_root_unless_its_spec_says_writable_root(write_stack: Callable[..., str]):
    """runtime.read_only_root, the rule local Docker follows too: read-only with an emptyDir /tmp by default."""
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: roots}
        spec:
          workloads:
            - {name: web, image: hybridorch.local/httpd:1, trust: trusted}
            - {name: legacy, image: hybridorch.local/busybox:1, trust: trusted, writableRoot: true}
    """)
    by = render(path).documents_by_workload()
    for name, read_only, scratch in (("web", True, True), ("legacy", False, False)):
        pod = by[name][0]["spec"]["template"]["spec"]
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is read_only
        assert any(v["name"] == "hybridorch-tmp" for v in pod.get("volumes") or []) is scratch


def test_two_workloads_on_one_port_render_everywhere_and_the_second_vm_gets_an_automatic_forward(
        write_stack: Callable[..., str]):
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: twins}
        spec:
          workloads:
            - {name: web, image: hybridorch.local/httpd:1, trust: trusted, ports: [8080]}
            - {name: api, image: hybridorch.local/httpd:1, runtime: vm, ports: [8080]}
    """)
    services = [d for d in render(path).documents if d["kind"] == "Service"]
    assert [(s["metadata"]["name"], s["spec"]["ports"][0]["port"]) for s in services] == [("web", 8080), ("api", 8080)]
    local = render_plan(plan_stack(path), "local", cache_dir=CACHE)
    # web (a container, first) keeps host port 8080; the VM forwards from a port QEMU picks
    assert "hostfwd=tcp:127.0.0.1:0-:8080" in local.file("api/domain.xml").content


# --- values can never become structure ----------------------------------------------------------------

NASTY = ["a\nkind: Pod", "{{ x }}", "{% raw %}", "x: y", "--- \nkind: Secret", "'\"", "- 1", "&a *a", "yes",
         "0x1F", "null", "~", "8080", "ü\u2028\x00\t", "${HOME} %n $$"]


@pytest.mark.parametrize("value", NASTY)
def test_yaml_value_round_trips(value: str):
    assert yaml.safe_load(f"key: {yaml_value(value)}\n") == {"key": value}
    assert yaml.safe_load(f"key: {yaml_value({'k': [value]})}\n") == {"key": {"k": [value]}}


def test_yaml_value_refuses_floats():
    with pytest.raises(TypeError):
        yaml_value(1.5)


def test_injection_through_env_command_and_user_data_stays_a_string(write_stack: Callable[..., str]):
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: evil}
        spec:
          workloads:
            - name: app
              image: "img:1"   # an image with a newline is refused at load (test_input_disclosure)
              command: ["sh", "-c", "echo {{ x }}\\nkind: Pod"]
              env:
                A: "a\\nkind: Pod"
                B: "{{ x }}"
                C: "{% if true %}x{% endif %}"
              ports: [8080]
            - name: nest
              trust: trusted
              vm: {disk: {image: "hybridorch.local/ledger-disk:1"}}   # its own disk: podman units via cloud-init
              containers:
                - name: c
                  image: busybox
                  command: ["sh", "-c", "echo 100% $HOME\\nExecStartPre=/bin/rm -rf /"]
                  env: {E: "v\\"\\n[Service]\\nExecStart=/bin/evil"}
    """)
    rendered = render(path)
    assert sorted(d["kind"] for d in rendered.documents).count("Secret") == 0
    assert "Pod" not in {d["kind"] for d in rendered.documents}
    app = rendered.documents_by_workload()["app"][0]["spec"]["template"]["spec"]["containers"][0]
    assert app["image"] == "img:1"
    assert app["command"] == ["sh", "-c", "echo {{ x }}\nkind: Pod"]
    assert app["env"] == [{"name": "A", "value": "a\nkind: Pod"}, {"name": "B", "value": "{{ x }}"},
                          {"name": "C", "value": "{% if true %}x{% endif %}"}]
    vm = rendered.documents_by_workload()["nest"][0]
    config = yaml.safe_load(vm["spec"]["template"]["spec"]["volumes"][1]["cloudInitNoCloud"]["userData"])
    unit = config["write_files"][0]["content"]
    lines = unit.splitlines()
    assert [ln.split("=")[0] for ln in lines if "=" in ln and not ln.startswith((" ", "\t"))] == [
        "Description", "Wants", "After", "Restart", "ExecStartPre", "ExecStart", "ExecStop", "WantedBy"]
    assert '"sh" "-c" "echo 100%% $$HOME\\x0aExecStartPre=/bin/rm -rf /"' in unit
    assert '--env "E=v\\"\\x0a[Service]\\x0aExecStart=/bin/evil"' in unit
    assert lines.count("[Service]") == 1


def test_unit_arg_quotes_and_escapes():
    assert unit_arg('a b"\\%$\n') == '"a b\\"\\\\%%$$\\x0a"'


# --- templates: overrides, sandbox, errors --------------------------------------------------------------

def user_templates(tmp_path: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (tmp_path / "tpl" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tpl" / rel).write_text(text)
    return str(tmp_path / "tpl")


def test_user_template_overrides_only_its_file(tmp_path: Path):
    builtin = (ROOT / "templates" / "kubernetes" / "service.yaml.j2").read_text()
    custom = builtin.replace("  labels: {{ labels }}\n",
                             "  labels: {{ labels }}\n  annotations: {team: {{ 'shop-' ~ name }}}\n")
    assert custom != builtin
    tpl = user_templates(tmp_path, {"kubernetes/service.yaml.j2": custom})
    base = render(example("shop"))
    over = render(example("shop"), templates=tpl)
    changed = [(a["kind"], a["metadata"]["name"]) for a, b in zip(base.documents, over.documents) if a != b]
    assert changed and all(kind == "Service" for kind, _ in changed)
    assert len(changed) == sum(d["kind"] == "Service" for d in base.documents)
    web = next(d for d in over.documents if d["kind"] == "Service" and d["metadata"]["name"] == "web")
    assert web["metadata"]["annotations"] == {"team": "shop-web"}


def test_user_templates_run_sandboxed(tmp_path: Path):
    tpl = user_templates(tmp_path, {"kubernetes/service.yaml.j2":
                                    "x: {{ name.__class__.__mro__[1].__subclasses__() }}\n"})
    with pytest.raises(RenderError, match=r"service\.yaml\.j2:1: .*unsafe"):
        render(example("shop"), templates=tpl)


def test_undefined_variable_names_file_line_and_variable(tmp_path: Path):
    text = (ROOT / "templates" / "kubernetes" / "workload.yaml.j2").read_text().splitlines()
    line = next(i for i, ln in enumerate(text) if "replicas:" in ln) + 1
    text[line - 1] = "  replicas: {{ w.replica_count }}"
    tpl = user_templates(tmp_path, {"kubernetes/workload.yaml.j2": "\n".join(text) + "\n"})
    with pytest.raises(RenderError) as err:
        render(example("shop"), templates=tpl)
    message = str(err.value)
    assert f"{tpl}/kubernetes/workload.yaml.j2:{line}:" in message and "replica_count" in message


def test_template_syntax_error_names_file_and_line(tmp_path: Path):
    tpl = user_templates(tmp_path, {"kubernetes/limitrange.yaml.j2": "a: 1\nb: {% if %}\n"})
    with pytest.raises(RenderError, match=r"limitrange\.yaml\.j2:2: template syntax error"):
        render(example("shop"), templates=tpl)


def test_unfiltered_value_is_still_quoted(tmp_path: Path):
    # a user template that forgets `| yaml` cannot inject either: finalize quotes every expression
    tpl = user_templates(tmp_path, {"kubernetes/service.yaml.j2":
                                    (ROOT / "templates/kubernetes/service.yaml.j2").read_text()})
    rendered = render(example("shop"), templates=tpl)
    assert all(validate.object_problems(d) == [] for d in rendered.documents)


def test_invalid_render_writes_nothing(tmp_path: Path):
    text = (ROOT / "templates" / "kubernetes" / "workload.yaml.j2").read_text()
    tpl = user_templates(tmp_path, {"kubernetes/workload.yaml.j2":
                                    text.replace("  replicas: {{ w.replicas }}", "  replicas: {{ 'two' }}")})
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["render", example("shop"), "--templates", tpl, "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert "spec.replicas" in result.output and "Traceback" not in result.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["tpl"]


# --- what a user template may cost -------------------------------------------------------------------------

# each template would hang, exhaust memory or recurse without the sandbox's bounds; each must end in one line
COSTLY = {
    "power": ("x: {{ 9 ** (9 ** 9) }}\n", "would make a number of more than"),
    "power-of-variables": ("{% set n = 9 %}x: {{ n ** (n ** n) }}\n", "would make a number of more than"),
    "big-products": ("{% set n = 10 ** 300 %}{% set m = n * n * n * n * n %}x: {{ m * m * m }}\n",
                     "would make a number of more than"),
    "string-times": ("x: {{ 'a' * 1000000000 }}\n", "would make a value larger than"),
    "list-times": ("x: {{ ([1] * 100000) * 100000 }}\n", "would make a value larger than"),
    "range": ("{% for i in range(10 ** 9) %}{% endfor %}x: 1\n", "larger than 100000"),
    "range-under-arg-limit": ("{% for i in range(99999) %}{% endfor %}x: 1\n", "range() of more than"),
    "recursive-macro": ("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}x: {{ m(1) }}\n", "calls nested more than"),
    "self-include": ("{% include 'kubernetes/workload.yaml.j2' %}\n", "nest too deeply"),
    "doubling-concat": ("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
                        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}x: {{ ns.s }}\n", "a ~ result larger than"),
    "doubling-lists": ("{% set ns = namespace(l=['x' * 1000]) %}{% for i in range(40) %}"
                       "{% set ns.l = [ns.l, ns.l] %}{% endfor %}x: {{ ns.l|string|length }}\n", "larger than"),
    "wide-method": ("x: {{ 'a'.center(1000000000) }}\n", "larger than 100000"),
    "wide-filter": ("x: {{ 'a'|center(1000000000) }}\n", "larger than 100000"),
    "wide-format": ("x: {{ '%0999999999d' % 1 }}\n", "format width"),
    "wide-str-format": ("x: {{ '{:>999999999}'.format(1) }}\n", "format width"),
    "output": ("{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}\n", "output larger than"),
    "join": ("{% set l = ['x' * 1000000] * 4 %}x: {{ (l * 4)|join }}\n", "would make a value larger than"),
    "division-by-zero": ("x: {{ 1 / 0 }}\n", "ZeroDivisionError"),
    "float-overflow": ("x: {{ 9.0 ** 99999 }}\n", "OverflowError"),
    "yaml-alias-bomb": ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b]\n",
                        "aliases are not allowed"),
}


@pytest.mark.parametrize("case", sorted(COSTLY))
def test_costly_user_template_is_one_line_render_error(tmp_path: Path, case: str):
    text, reason = COSTLY[case]
    # workload.yaml.j2 sees only `w`: nothing shadows the sandbox's globals (namespace, range)
    tpl = user_templates(tmp_path, {"kubernetes/workload.yaml.j2": text})
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["render", example("shop"), "--templates", tpl])
    assert time.monotonic() - start < 8, case
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {tpl}/kubernetes/workload.yaml.j2"), lines[0]
    assert reason in lines[0], lines[0]


def test_endless_loop_stops_at_the_deadline_and_leaves_no_thread_or_alarm(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    import signal
    import threading

    from hybridorch.render import sandbox

    monkeypatch.setattr(sandbox, "MAX_SECONDS", 1.0)
    # nested loops over a plain list call no sandbox hook at all: only the alarm can stop them
    tpl = user_templates(tmp_path, {"kubernetes/workload.yaml.j2":
                                    "{% set l = range(10000)|list %}{% for a in l %}{% for b in l %}{% for c in l %}"
                                    "{% endfor %}{% endfor %}{% endfor %}x: 1\n"})
    threads, handler = threading.active_count(), signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(RenderError, match=r"workload\.yaml\.j2:1: rendering took longer than 1 s"):
        render(example("shop"), templates=tpl)
    assert time.monotonic() - start < 5
    assert threading.active_count() == threads
    assert signal.getsignal(signal.SIGALRM) == handler and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_template_symlink_leaving_the_directory_is_refused(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password: hunter2\n")
    tpl = Path(user_templates(tmp_path, {"cloud-init/meta-data.yaml.j2": "x: 1\n"}))
    (tpl / "kubernetes").mkdir()
    (tpl / "kubernetes" / "service.yaml.j2").symlink_to(secret)
    result = CliRunner().invoke(cli, ["render", example("shop"), "--templates", str(tpl)])
    assert result.exit_code == 3 and "hunter2" not in result.output
    assert "service.yaml.j2: refused: the template is a symlink" in result.output
    # a symlinked directory is refused the same way; a symlink that stays inside is fine
    (tpl / "kubernetes" / "service.yaml.j2").unlink()
    (tpl / "kubevirt").symlink_to(tmp_path)
    (tmp_path / "virtualmachine.yaml.j2").write_text("x: 1\n")
    with pytest.raises(RenderError, match="refused: the template is a symlink"):
        render(example("shop"), templates=str(tpl))
    (tpl / "kubevirt").unlink()
    (tpl / "kubernetes" / "own.yaml.j2").write_text((ROOT / "templates/kubernetes/service.yaml.j2").read_text())
    (tpl / "kubernetes" / "service.yaml.j2").symlink_to("own.yaml.j2")
    assert render(example("shop"), templates=str(tpl)).documents


def test_invalid_libvirt_xml_is_a_render_error(tmp_path: Path):
    require(validate.libvirt_available(), "virt-xml-validate/xmllint not installed (e2e/packages.txt)")
    tpl = user_templates(tmp_path, {"libvirt/domain.xml.j2": "<domain type='nonsense'><name>{{ domain }}</name></domain>\n"})
    # the first domain in plan order: recommender-plugin's own VM where Docker has no sandbox runtime
    with pytest.raises(RenderError, match="domain XML of (recommender-plugin|ledger-vm) is invalid"):
        render(example("shop"), target="local", templates=tpl)


def test_invalid_user_data_is_a_render_error(write_stack: Callable[..., str]):
    require(validate.cloud_init_available(), "cloud-init not installed (e2e/packages.txt)")
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: ci}
        spec:
          workloads:
            - name: box
              runtime: vm
              vm: {userData: "#cloud-config\\npackages: 3"}
    """)
    with pytest.raises(RenderError, match="box: cloud-init user data is invalid: .*packages"):
        render(path)


def test_user_data_is_merged(write_stack: Callable[..., str]):
    path = write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: ci}
        spec:
          workloads:
            - name: box
              runtime: vm
              vm: {userData: "#cloud-config\\npackages: [htop]\\ntimezone: UTC"}
    """)
    vm = render(path).documents[-1]
    config = yaml.safe_load(vm["spec"]["template"]["spec"]["volumes"][1]["cloudInitNoCloud"]["userData"])
    assert config == {"hostname": "box", "packages": ["htop"], "timezone": "UTC"}


# --- files ---------------------------------------------------------------------------------------------

def test_write_kubernetes_layout_and_kustomization(tmp_path: Path):
    paths = render_example("shop").write(str(tmp_path / "out"))
    rel = sorted(Path(p).relative_to(tmp_path / "out").as_posix() for p in paths)
    assert "kustomization.yaml" in rel and "workloads/ledger-vm.yaml" in rel and "tenants/payments.yaml" in rel
    kustomization = yaml.safe_load((tmp_path / "out" / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "cluster/runtimeclasses.yaml"
    assert sorted(kustomization["resources"]) == sorted(r for r in rel if r != "kustomization.yaml")
    on_disk = [d for r in kustomization["resources"] for d in yaml.safe_load_all((tmp_path / "out" / r).read_text())]
    assert sorted(map(repr, on_disk)) == sorted(map(repr, render_example("shop").documents))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]   # no staging directory left behind


def test_write_local_files(tmp_path: Path):
    paths = render_example("legacy-windows", "local").write(str(tmp_path))
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in paths) == [
        "billing-win/domain.xml", "reports/domain.xml", "reports/meta-data", "reports/user-data"]
    assert yaml.safe_load((tmp_path / "reports" / "meta-data").read_text()) == {
        "instance-id": "hybridorch-legacy-reports", "local-hostname": "reports"}


def tree(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_write_replaces_a_previous_render_exactly(tmp_path: Path):
    out = tmp_path / "out"
    render_example("shop").write(str(out))
    (out / "workloads" / "gone.yaml").write_text("kind: Stale\n")   # a file an older render wrote
    render_example("soc-rig").write(str(out))
    assert tree(out) == {f.path: f.content for f in render_example("soc-rig").files}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_refuses_a_directory_of_other_files(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine\n")
    result = CliRunner().invoke(cli, ["render", example("shop"), "--out", str(tmp_path)])
    # a place the output cannot go is bad input (2), not a failed render (3)
    assert result.exit_code == 2 and "holds files a render does not write (notes.txt)" in result.output
    assert tree(tmp_path) == {"notes.txt": "mine\n"}


def test_write_fault_half_way_keeps_the_previous_content(tmp_path: Path):
    """A real fault while the new content is written: a file is in the way of a directory it needs."""
    out = tmp_path / "out"
    render_example("shop", "local").write(str(out))
    before = tree(out)
    broken = Rendered("local", "x", (), (RenderedFile("web/domain.xml", "<a/>\n"),
                                         RenderedFile("web/domain.xml/user-data", "x\n")))
    with pytest.raises(OutputError, match="cannot write to .*nothing was changed"):
        broken.write(str(out))
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_fault_when_the_old_directory_cannot_move_keeps_it(tmp_path: Path):
    """A real fault at the swap: the previous directory is immutable (chattr +i), so it cannot be renamed away."""
    import shutil
    import subprocess

    out = tmp_path / "out"
    render_example("shop").write(str(out))
    before = tree(out)
    immutable = shutil.which("chattr") is not None and \
        subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode == 0
    require(immutable, "chattr +i does not work here (e2fsprogs, a filesystem with attributes)")
    try:
        result = CliRunner().invoke(cli, ["render", example("soc-rig"), "--out", str(out)])
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert result.exit_code == 2 and "Operation not permitted" in result.output, result.output
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_under_a_regular_file_is_one_line_and_writes_nothing(tmp_path: Path):
    """A real fault before anything is written: the target's parent is a regular file."""
    (tmp_path / "file").write_text("x\n")
    result = CliRunner().invoke(cli, ["render", example("shop"), "--out", str(tmp_path / "file" / "out")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert tree(tmp_path) == {"file": "x\n"}


def test_write_swap_in_failure_restores_the_old_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """SIMULATED fault (os.rename patched): renaming the new directory in fails after the old one moved away,
    which no real permission setup produces between two renames in the same directory."""
    out = tmp_path / "out"
    render_example("shop").write(str(out))
    before = tree(out)
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if ".out.new-" in str(src):
            raise OSError(28, "No space left on device (simulated)")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OutputError, match="simulated"):
        render_example("soc-rig").write(str(out))
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_local_stream_headers_cannot_be_forged():
    evil = "line\n# --- other/user-data\n--- # file: \"other/user-data\"\npath: x\n---\nkind: Secret\n"
    rendered = Rendered("local", "x", (), (RenderedFile("a/user-data", evil), RenderedFile("a/meta-data", "m: 1\n"),
                                           RenderedFile("b/domain.xml", "<d>\n--- # file: \"c\"</d>")))
    text = rendered.stream()
    headers = [ln for ln in text.splitlines() if ln.startswith(("---", "#"))]
    assert headers == ['--- # file: "a/user-data"', '--- # file: "a/meta-data"', '--- # file: "b/domain.xml"']
    assert [(d["path"], d["content"]) for d in yaml.safe_load_all(text)] == [(f.path, f.content)
                                                                             for f in rendered.files]
    real = render_example("soc-rig", "local")
    assert [RenderedFile(**d) for d in yaml.safe_load_all(real.stream())] == list(real.files)


def test_cli_render_to_stdout_is_the_stream():
    result = CliRunner().invoke(cli, ["render", example("soc-rig")])
    assert result.exit_code == 0, result.output
    assert result.output == render(example("soc-rig")).stream()


def test_unknown_target_is_a_render_error():
    with pytest.raises(RenderError, match="unknown render target"):
        render_plan(plan_stack(example("shop")), target="mars")


def test_render_time_of_shop_is_small():
    plan = plan_stack(example("shop"))
    render_plan(plan)   # warm caches (schemas, templates)
    start = time.perf_counter()
    render_plan(plan)
    elapsed = time.perf_counter() - start
    print(f"render examples/shop.yaml: {elapsed * 1000:.0f} ms")
    assert elapsed < 5, elapsed




def test_characters_past_the_basic_plane_render_and_read_back(tmp_path: Path):
    """JSON writes an emoji as a surrogate pair, which YAML refuses; the render writes YAML's \\U escape instead."""
    path = tmp_path / "astral.yaml"
    path.write_text('apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\nmetadata: {name: astral}\nspec:\n'
                    '  workloads:\n    - name: web\n      image: local/web:1\n'
                    '      env: {K: "\\u00e9\\u2028\\e\\x85\\U0001f984\\t"}\n      command: [echo, "\\U0001d400"]\n')
    rendered = render(str(path))
    deployment = next(d for d in yaml.safe_load_all(rendered.stream()) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["env"][0]["value"] == "\u00e9\u2028\x1b\x85\U0001f984\t"
    assert container["command"] == ["echo", "\U0001d400"]
