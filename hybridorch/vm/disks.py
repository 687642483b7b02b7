"""Boot disks of local VMs: a containerDisk (an OCI image holding /disk/*.qcow2 or *.img, KubeVirt's convention,
plus /boot/vmlinuz* and /boot/initrd* for KubeVirt-style kernel boot) taken from the local Docker engine, cached
as a base image under ~/.cache/hybridorch/disks/<image id>/, and booted as a qcow2 overlay with a NoCloud seed."""
from __future__ import annotations

import gzip
import io
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Mapping

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.core.runtime import VM_RUNTIMES, cache_root

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.core.spec import Workload


def plan_disks(plan: "Plan") -> list[str]:
    return [image for p in plan.placements if p.runtime in VM_RUNTIMES and (image := disk_image(p.workload))]


def disk_image(w: Workload) -> str | None:
    """The containerDisk a workload names, or None for the busybox guest (the same rule as rendering)."""
    from hybridorch.render.stack import DEFAULT_DISK_IMAGE, _disk_image

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


# --- a kernel boot for a containerDisk recipe (image build time only, never at `up`) ------------------

# what a Debian root on a virtio disk needs before its own init runs: the disk, ext4 (crc32c is only a softdep
# of ext4, so it is named), the NIC (the disk's root carries no modules), and iso9660 to read the NoCloud seed
ROOT_DISK_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "crc32c_generic", "ext4", "isofs")

# /init of the kernel-boot initramfs: load the modules, mount root= (read from the kernel command line the
# rendered domain passes) and hand over to the disk's own /sbin/init
_ROOT_INIT = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/hyb/modules.order); do insmod /lib/hyb/$m 2>/dev/null; done
root=
for arg in $(cat /proc/cmdline); do case "$arg" in root=*) root="${arg#root=}";; esac; done
[ -n "$root" ] || { echo "initrd: no root= on the kernel command line"; exec sh; }
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /newroot
mount -t ext4 -o rw "$root" /newroot || { echo "initrd: cannot mount $root"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""


def write_root_initramfs(modules: Mapping[str, Path], busybox: bytes, out: IO[bytes]) -> list[str]:
    """The initramfs of a disk boot: static busybox, ROOT_DISK_MODULES with their dependencies (from each
    module's .modinfo; modules the kernel has built in are skipped) and _ROOT_INIT. `modules` maps module
    names to their files in the kernel package. Returns the modules in load order."""
    from hybridorch.vm.guestimage import modinfo_depends, module_closure, read_module
    from hybridorch.vm.initramfs import CpioWriter

    deps: dict[str, list[str]] = {}
    todo = list(ROOT_DISK_MODULES)
    while todo:
        name = todo.pop()
        if name in deps or name not in modules:
            continue
        deps[name] = [d.replace("-", "_") for d in modinfo_depends(read_module(modules[name]))]
        todo += deps[name]
    order = module_closure(ROOT_DISK_MODULES, deps)
    w = CpioWriter(out)
    for d in ("bin", "proc", "sys", "dev", "newroot", "lib/hyb"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.file("bin/busybox", busybox, 0o755)
    for applet in ("sh", "mount", "umount", "insmod", "cat", "sleep", "mkdir", "switch_root"):
        w.symlink(f"bin/{applet}", "busybox")
    for name in order:
        w.file(f"lib/hyb/{name}.ko", read_module(modules[name]))   # busybox insmod takes plain .ko only
    w.file("lib/hyb/modules.order", "".join(f"{n}.ko\n" for n in order).encode())
    w.file("init", _ROOT_INIT.encode(), 0o755)
    w.close()
    return order


def build_kernel_boot(out: Path, arch: str = "amd64", kernel_package: str | None = None) -> str:
    """Debian's kernel (apt-get download + dpkg-deb -x with private apt lists, never installed) as
    out/vmlinuz, and out/initrd.img that mounts an ext4 virtio root; returns the kernel version. The kernel is
    the arch's from the arch table (the guests' own) unless `kernel_package` names another."""
    from hybridorch.vm.guestimage import Apt, check_arch, extract_deb, module_name
    from hybridorch.core.images import static_busybox

    info = check_arch(arch)
    apt = Apt(arch, cache_root() / "apt" / arch)
    if not any(apt.lists.glob("*_Packages*")):
        apt.update()
    package = apt.resolve(kernel_package or info.kernel_package)
    with tempfile.TemporaryDirectory(prefix="hybridorch-kernel-") as tmp:
        work = Path(tmp)
        (work / "debs").mkdir()
        extract_deb(apt.download(package, work / "debs"), work / "x")
        vmlinuz = sorted((work / "x" / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BackendError(f"{package} has no /boot/vmlinuz-*")
        version = vmlinuz[-1].name[len("vmlinuz-"):]
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vmlinuz[-1], out / "vmlinuz")
        modules = {module_name(str(p)): p for p in (work / "x" / "lib" / "modules" / version).rglob("*.ko*")}
        buf = io.BytesIO()
        write_root_initramfs(modules, static_busybox().read_bytes(), buf)
        (out / "initrd.img").write_bytes(gzip.compress(buf.getvalue(), compresslevel=6, mtime=0))
    return version


def main(argv: list[str] | None = None) -> int:
    """`python3 -m hybridorch.vm.disks kernel-boot OUTDIR [ARCH]`: what a recipe's `prepare` script calls."""
    from hybridorch.errors import HybridorchError

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3) or args[0] != "kernel-boot":
        print("usage: python3 -m hybridorch.vm.disks kernel-boot OUTDIR [ARCH]", file=sys.stderr)
        return 2
    try:
        version = build_kernel_boot(Path(args[1]), *args[2:])
    except HybridorchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"kernel {version}: {args[1]}/vmlinuz, {args[1]}/initrd.img")
    return 0


if __name__ == "__main__":
    sys.exit(main())
