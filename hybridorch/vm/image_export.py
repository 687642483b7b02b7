"""Container images moved into a guest: a local Docker image's filesystem exported as a tarball and its default
command and environment read, so the guest's runc can run it on the guest's own kernel (no registry is asked)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.vm.initramfs import GuestProgram

DOCKER_PREFIX = "docker:"   # a ContainerRun rootfs naming a local Docker image, exported by `materialize`
_NO_DOCKER = "apt-get install docker.io (or use `image: busybox` / `rootfs: DIR`)"


def inner_rootfs(image: str) -> str:
    """`busybox` (or a path) needs no engine; anything else is a local Docker image to export."""
    if image == "busybox" or image.startswith("busybox:"):
        return "busybox"
    if image.startswith("/") or image.startswith("./"):
        return image
    return f"{DOCKER_PREFIX}{image}"


def _docker(*args: str, what: str, timeout: float = 120, check: bool = False) -> proc.Completed[str]:
    return proc.run(["docker", *args], what=what, timeout=timeout, check=check, missing=_NO_DOCKER)


def export_image(image: str, arch: str, dest: Path) -> Path:
    """A local Docker image's filesystem as a tarball (docker create + export).

    The image must be built for the guest arch: the guest runs its binaries natively."""
    inspect = _docker("image", "inspect", "-f", "{{.Architecture}}", image, what=f"inspecting image {image}")
    if inspect.returncode != 0:
        raise BackendError(f"image {image!r} is not in the local Docker engine: build it first "
                           "(or use `image: busybox` for busybox-static of the guest arch)")
    image_arch = inspect.stdout.strip()
    if image_arch and image_arch != arch:
        raise BackendError(f"image {image!r} is {image_arch} but the guest is {arch}: build it for {arch}, or use "
                           "`image: busybox` (busybox-static of the guest arch)")
    cid = _docker("create", image, "/bin/true", what=f"cannot export image {image!r}", check=True).stdout.strip()
    try:
        proc.run(["docker", "export", cid], what=f"docker export of {image!r}", timeout=300, stdout=dest,
                 missing=_NO_DOCKER)
    finally:
        _docker("rm", "-f", cid, what=f"removing the export container of {image!r}")
    return dest


def image_config(image: str) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]:
    """What a local Docker image runs by default (entrypoint, cmd) and its environment, which runc in the guest
    does not know about: `docker export` keeps only the filesystem."""
    out = _docker("image", "inspect", "-f", "{{json .Config.Entrypoint}}\n{{json .Config.Cmd}}\n{{json .Config.Env}}",
                  image, what=f"inspecting image {image}")
    if out.returncode != 0:
        raise BackendError(f"image {image!r} is not in the local Docker engine: build it first")
    entry, cmd, env = (json.loads(part) or [] for part in out.stdout.splitlines()[:3])
    return tuple(entry), tuple(cmd), dict(item.split("=", 1) for item in env if "=" in item)


def materialize(program: GuestProgram, arch: str, workdir: Path,
                args: Mapping[str, tuple[str, ...]] | None = None) -> GuestProgram:
    """Replace docker:IMAGE roots by exported tarballs in `workdir`, so building the guest needs no engine.

    A container without a command runs the image's entrypoint with `args[name]` (the spec's `args`), or with the
    image's cmd when there are none: what `docker run` would run."""
    containers = []
    for c in program.containers:
        if c.rootfs.startswith(DOCKER_PREFIX):
            image = c.rootfs[len(DOCKER_PREFIX):]
            entrypoint, cmd, image_env = image_config(image)
            extra = (args or {}).get(c.name)
            c = replace(c, command=c.command or (entrypoint + (extra if extra else cmd)), env={**image_env, **c.env})
            tar = export_image(image, arch, workdir / f"{c.name}.rootfs.tar")
            c = replace(c, rootfs=str(tar))
        if not c.command:
            raise BackendError(f"{program.title}: container {c.name} needs a command (the guest runs it with runc)")
        containers.append(c)
    return replace(program, containers=tuple(containers))
