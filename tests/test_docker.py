"""Fast tests of the local target's pure parts: image recipes, plan splitting, naming and helper parsing.

Everything that talks to the engine is in e2e/test_local.py.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

from hybridorch.core import images
from hybridorch.api import plan_stack
from hybridorch.backends import docker as docker_backend
from hybridorch.backends import docker_api, docker_ports
from hybridorch.backends.local import LocalBackend
from hybridorch.errors import BackendError
from tests.conftest import ROOT

EXAMPLE_IMAGES = ROOT / "examples" / "images"


def test_backends_do_not_import_the_sdk_until_used() -> None:
    code = ("import sys; import hybridorch.backends.local, hybridorch.backends.docker; "
            "print('docker' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_recipes_of_the_example_images_build_parents_first() -> None:
    order = images.build_order("hybridorch.local/httpd:1", [EXAMPLE_IMAGES])
    assert [r.ref for r in order] == ["hybridorch.local/busybox:1", "hybridorch.local/httpd:1"]
    assert order[0].needs_busybox and not order[1].needs_busybox
    assert order[1].parents == ("hybridorch.local/busybox:1",)


def test_assembled_context_holds_the_static_busybox(tmp_path: Path) -> None:
    recipe = images.find_recipe("hybridorch.local/busybox:1", [EXAMPLE_IMAGES])
    assert recipe is not None
    try:
        busybox = images.static_busybox()
    except BackendError:
        require(False, "busybox-static is not installed (e2e/packages.txt)")
        return
    context = recipe.assemble(tmp_path / "ctx")
    assert (context / "Dockerfile").read_text() == recipe.dockerfile.read_text()
    assert (context / "busybox").read_bytes()[:4] == b"\x7fELF"
    assert (context / "busybox").stat().st_size == busybox.stat().st_size


def test_static_elf_detection() -> None:
    assert not images.is_static_elf(Path(sys.executable).resolve())  # a dynamically linked interpreter
    if Path("/bin/busybox").exists() and images.is_static_elf(Path("/bin/busybox")):
        assert images.static_busybox() == Path("/bin/busybox")
    assert not images.is_static_elf(ROOT / "setup.cfg")


def test_unknown_images_name_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"hybridorch.local/nope:1 is missing .* images/nope/Dockerfile"):
        images.build_order("hybridorch.local/nope:1", [EXAMPLE_IMAGES])
    with pytest.raises(BackendError, match=r"no registry to pull from.*docker load"):
        images.build_order("docker.io/library/nginx:1", [EXAMPLE_IMAGES])
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "Dockerfile").write_text("FROM hybridorch.local/loop:1\n")
    with pytest.raises(BackendError, match="built FROM itself"):
        images.build_order("hybridorch.local/loop:1", [tmp_path])


def test_recipe_dirs_next_to_the_stack_come_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "images" / "busybox").mkdir(parents=True)
    (tmp_path / "images" / "busybox" / "Dockerfile").write_text("FROM scratch\n")
    monkeypatch.delenv("HYBRIDORCH_IMAGES", raising=False)
    dirs = images.image_dirs(str(tmp_path / "stack.yaml"))
    assert dirs[0] == tmp_path / "images"
    recipe = images.find_recipe("hybridorch.local/busybox:1", dirs)
    assert recipe is not None and recipe.directory == tmp_path / "images" / "busybox" and not recipe.needs_busybox


def test_local_backend_splits_containers_first() -> None:
    plan = plan_stack(str(ROOT / "examples" / "shop.yaml"))
    parts = LocalBackend.split(plan)
    assert [kind for kind, _ in parts] == ["containers", "vms"]
    assert [p.name for p in parts[0][1].placements] == ["web", "api", "recommender-plugin", "payments"]
    assert [p.name for p in parts[1][1].placements] == ["ledger-vm"]
    assert parts[0][1].stack is plan.stack


def test_docker_backend_refuses_vm_placements() -> None:
    plan = plan_stack(str(ROOT / "examples" / "shop.yaml"))
    with pytest.raises(BackendError, match="ledger-vm need a VM: use --target local"):
        docker_backend.DockerBackend().up(plan, None)


def test_names() -> None:
    assert docker_backend.container_name("shop", "web", 1) == "shop-web-1"
    assert docker_backend.network_name("shop", "payments") == "hybridorch-shop-payments"
    # one volume per replica and spec volume, like a StatefulSet's claim per pod
    assert docker_backend.volume_name("shop", "db", 1, "data") == "hybridorch-shop-db-1-data"
    assert docker_backend.stack_filter("shop") == {
        "label": ["app.kubernetes.io/managed-by=hybridorch", "hybridorch.dev/stack=shop"]}


def test_port_probe_sees_a_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not docker_ports.port_free("127.0.0.1", port, "tcp")
    assert docker_ports.port_free("127.0.0.1", port, "tcp")


def test_connection_errors_are_reduced_to_their_os_reason() -> None:
    try:
        try:
            raise FileNotFoundError(2, "No such file or directory")
        except OSError as inner:
            raise RuntimeError("Error while fetching server API version: ('Connection aborted.', ...)") from inner
    except RuntimeError as err:
        assert docker_api.root_reason(err) == "No such file or directory"
    message = docker_api.engine_down_message("unix:///tmp/x.sock", ConnectionRefusedError(111, "Connection refused"))
    assert message.startswith("Docker engine not reachable at unix:///tmp/x.sock (Connection refused)")
    assert "\n" not in message


def test_a_removal_says_what_was_kept_and_how_to_remove_it() -> None:
    from hybridorch.backends.base import Kept, Removal

    kept = Kept("volume hybridorch-shop-db-0-data", docker_backend.DATA_KEPT, "docker volume rm hybridorch-shop-db-0-data")
    total = Removal(("container shop-db-0",)) + Removal((), (kept,))
    assert total.removed == ("container shop-db-0",) and total.kept == (kept,) and total.data_kept
    assert str(kept) == ("kept volume hybridorch-shop-db-0-data: data (kept without --delete-data); remove it with: "
                         "docker volume rm hybridorch-shop-db-0-data")
    assert not Removal((), (Kept("Namespace shop", "it holds objects hybridorch did not make: ConfigMap shop/x",
                                 "kubectl delete namespaces shop"),)).data_kept


def test_containers_get_the_clusters_hardening_and_a_port_twice_is_published_twice(write_stack) -> None:
    """runtime.read_only_root for every container (not only sandboxed ones); the second workload on 8080 gets an
    automatic host port (None: Docker picks a free one). The engine is a stand-in: only the image is looked up."""
    from types import SimpleNamespace

    plan = plan_stack(write_stack("""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: twins}
        spec:
          workloads:
            - {name: web, image: hybridorch.local/httpd:1, trust: trusted, ports: [8080]}
            - {name: api, image: hybridorch.local/httpd:1, trust: trusted, ports: [8080], writableRoot: true}
    """))
    backend = docker_backend.DockerBackend()
    image = SimpleNamespace(attrs={"Config": {"User": "65534:65534"}}, id="sha256:1")
    backend._docker = SimpleNamespace(images=SimpleNamespace(get=lambda ref: image))
    backend._errors = SimpleNamespace(APIError=type("APIError", (Exception,), {}),
                                      DockerException=type("DockerException", (Exception,), {}))
    web, api = (backend._specs(plan, p, None)[0] for p in plan.placements)
    assert (web.create["read_only"], web.create["tmpfs"]) == (True, docker_backend.SCRATCH_TMPFS)
    assert api.create["read_only"] is False and "tmpfs" not in api.create
    assert web.create["ports"] == {"8080/tcp": ("127.0.0.1", 8080)}
    assert api.create["ports"] == {"8080/tcp": ("127.0.0.1", None)} and api.host_ports == (("127.0.0.1", None, "tcp"),)
