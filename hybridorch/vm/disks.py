"""Boot disks of local VMs: a containerDisk (an OCI image holding /disk/*.qcow2 or *.img, KubeVirt's convention,
plus /boot/vmlinuz* and /boot/initrd* for KubeVirt-style kernel boot) taken from the local Docker engine, cached
as a base image under ~/.cache/hybridorch/disks/<image id>/, and booted as a qcow2 overlay with a NoCloud seed."""
from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from .. import proc
from ..errors import BackendError
from .host import cache_root

if TYPE_CHECKING:
    from ..plan import Plan
    from ..spec import Workload


def plan_disks(plan: "Plan") -> list[str]:
    return [image for p in plan.placements if p.runtime in ("vm", "nested") and (image := disk_image(p.workload))]


def disk_image(w: Workload) -> str | None:
    """The containerDisk a workload names, or None for the busybox guest (the same rule as rendering)."""
    from ..render import DEFAULT_DISK_IMAGE, _disk_image

    if w.vm.disk_pvc:
        raise BackendError(f"workload {w.name}: vm.disk.pvc names a cluster volume, which the local target does "
                           "not have: use vm.disk.image (a containerDisk) or --target kubernetes")
    image = _disk_image(w)
    return None if image in (None, DEFAULT_DISK_IMAGE) else image


@dataclass(frozen=True)
class BaseDisk:
    image: str
    disk: Path
    fmt: str            # qcow2 | raw
    kernel: Path
    initrd: Path | None


def _docker(*args: str, what: str, timeout: float = 300, stdout: Path | None = None) -> str:
    return proc.run(["docker", *args], what=what, timeout=timeout, stdout=stdout,
                    missing="apt-get install docker.io").stdout


def base_disk(image: str, arch: str) -> BaseDisk:
    """The cached base of `image` (extracted once per image id)."""
    inspect = proc.run(["docker", "image", "inspect", "-f", "{{.Id}} {{.Architecture}}", image],
                       what=f"containerDisk {image}", check=False, missing="apt-get install docker.io")
    if inspect.returncode != 0:
        raise BackendError(f"containerDisk {image!r} is not in the local Docker engine: build it first "
                           "(examples/images has recipes)")
    image_id, _, _ = inspect.stdout.strip().partition(" ")
    root = cache_root() / "disks" / image_id.replace("sha256:", "")[:24]
    if not (root / "base.json").exists():
        _extract(image, root)
    disk = next(iter(sorted(root.glob("disk.*"))), None)
    kernel = root / "vmlinuz"
    if disk is None:
        raise BackendError(f"image {image!r} is not a containerDisk: no /disk/*.qcow2 or /disk/*.img in it")
    if not kernel.exists():
        raise BackendError(f"containerDisk {image!r} has no /boot/vmlinuz*: the local target boots a disk with "
                           "the kernel its image ships (KubeVirt's kernelBoot layout)")
    initrd = root / "initrd.img"
    return BaseDisk(image, disk, "qcow2" if disk.suffix == ".qcow2" else "raw", kernel,
                    initrd if initrd.exists() else None)


def _extract(image: str, root: Path) -> None:
    new = root.with_name(root.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    try:
        cid = _docker("create", image, "/disk", what=f"containerDisk {image}").strip()
        try:
            _docker("export", cid, what=f"containerDisk {image}", stdout=new / "image.tar")
        finally:
            proc.run(["docker", "rm", "-f", cid], what="docker rm", check=False)
        with tarfile.open(new / "image.tar") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if not member.isreg():
                    continue
                if name.startswith("disk/") and name.endswith((".qcow2", ".img")):
                    dest = new / ("disk.qcow2" if name.endswith(".qcow2") else "disk.img")
                elif name.startswith("boot/vmlinuz"):
                    dest = new / "vmlinuz"
                elif name.startswith("boot/initrd"):
                    dest = new / "initrd.img"
                else:
                    continue
                src = tar.extractfile(member)
                if src is not None:
                    with open(dest, "wb") as fh:
                        shutil.copyfileobj(src, fh)
        (new / "image.tar").unlink()
        (new / "base.json").write_text(f'{{"image": "{image}"}}\n')
        shutil.rmtree(root, ignore_errors=True)
        new.rename(root)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def prepare(base: BaseDisk, workdir: Path, seed: Mapping[str, str]) -> None:
    """A fresh qcow2 overlay on the base, the disk's kernel beside it, and the NoCloud seed (ISO 9660, volume
    id cidata) made of the rendered user-data and meta-data."""
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.disk), "-F", base.fmt,
              str(workdir / "disk.qcow2")], what=f"overlay on {base.image}", missing="apt-get install qemu-utils")
    shutil.copyfile(base.kernel, workdir / "vmlinuz")
    if base.initrd is not None:
        shutil.copyfile(base.initrd, workdir / "initrd.img")
    if seed:
        src = workdir / "seed"
        src.mkdir(exist_ok=True)
        for name, text in seed.items():
            (src / name).write_text(text)
        proc.run(["genisoimage", "-quiet", "-output", str(workdir / "seed.iso"), "-volid", "cidata", "-joliet",
                  "-rock", *[str(src / n) for n in seed]], what="cloud-init seed",
                 missing="apt-get install genisoimage")
