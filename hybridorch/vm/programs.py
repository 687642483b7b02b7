"""What the busybox guest of a workload runs (its GuestProgram), one answer for every target: the local backend
boots it with libvirt, the kubernetes backend builds it into a nested VM's kernelBoot image for KubeVirt."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hybridorch.errors import BackendError
from hybridorch.core.runtime import Runtime, container_env, read_only_root
from hybridorch.vm.image_export import DOCKER_PREFIX, inner_rootfs
from hybridorch.vm.initramfs import ContainerRun, GuestProgram

if TYPE_CHECKING:
    from hybridorch.core.spec import Workload


def program_for(w: Workload, runtime: Runtime, stack: str = "", replica: int = 0) -> GuestProgram:
    """What the guest of a vm/nested workload runs: inner containers, the workload's command, or httpd; a
    sandboxed workload's guest runs its container image with runc on the guest's own kernel, with the spec's
    command (args go to the image's entrypoint: see materialize) and env, as Docker would."""
    if runtime is Runtime.SANDBOXED:
        assert w.image is not None   # the spec loader requires an image for container runtimes
        env = container_env(w, stack, replica)
        argv = tuple(w.command or ()) + tuple(w.args or ()) if w.command is not None else ()
        # the same hardening as the container would get in Docker or a pod: core.runtime.read_only_root
        run = ContainerRun(w.name, argv, inner_rootfs(w.image), env, timeout=0, host_network=True,
                           read_only=read_only_root(w))
        return GuestProgram(w.name, containers=(run,), env=dict(w.env))
    if runtime is Runtime.NESTED:
        containers = []
        for c in w.containers:
            rootfs = inner_rootfs(c.image)
            if not c.command and not rootfs.startswith(DOCKER_PREFIX):
                raise BackendError(f"{w.name}: inner container {c.name} needs a command (the guest runs it with runc)")
            containers.append(ContainerRun(c.name, tuple(c.command or ()), rootfs, dict(c.env),
                                           timeout=0, host_network=True))
        return GuestProgram(w.name, containers=tuple(containers), env=dict(w.env))
    command = tuple(w.command or ()) + tuple(w.args or ()) or None
    if w.runtime is None and w.image and not (w.vm.disk_image or w.vm.disk_pvc):
        # a container image the policy moved into a VM (own kernel, escape surface, ...): the guest runs it with
        # runc on its own kernel, as the KubeVirt rendering runs it with podman; an image named by an explicit
        # `runtime: vm` is a boot disk instead, which the local busybox guest stands in for
        env = {"HYBRIDORCH_WORKLOAD": w.name, **w.env}
        run = ContainerRun(w.name, command or (), inner_rootfs(w.image), env, timeout=0, host_network=True)
        return GuestProgram(w.name, containers=(run,), env=dict(w.env))
    ports = tuple(p.port for p in w.ports if p.protocol == "TCP")
    return GuestProgram(w.name, http_ports=ports, command=command, env=dict(w.env))
