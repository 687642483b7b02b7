"""The soc-test board images without Docker: the QEMU command line per arch and machine, what goes into the QEMU
image and how its tag follows its inputs (fake binaries, libraries, firmware and guests in tmp dirs), the
one-line errors, and building only what the engine lacks (docker answered by a fake)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.render.domain import MACHINES
from hybridorch.vm import board_image as bi
from hybridorch.vm import host


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("arch, machine, binary, machine_opts, cpu, console", [
    ("amd64", "q35", "/usr/bin/qemu-system-x86_64", "q35,usb=off", None, "ttyS0"),
    ("amd64", "pc", "/usr/bin/qemu-system-x86_64", "pc,usb=off", None, "ttyS0"),
    # arm64 `virt` has ACPI only with UEFI: its direct kernel boot uses the device tree, as libvirt's -no-acpi says
    ("arm64", "virt", "/usr/bin/qemu-system-aarch64", "virt,usb=off,acpi=off", "cortex-a57", "ttyAMA0"),
])
def test_qemu_args_boot_the_busybox_guest_under_tcg(arch: str, machine: str, binary: str, machine_opts: str,
                                                    cpu: str | None, console: str) -> None:
    args = bi.qemu_args(arch, machine, 2, 384, f"/board/{arch}/vmlinuz", "/work/initrd.img")
    assert args[0] == binary == bi.image_binary(arch)
    assert _value(args, "-machine") == machine_opts
    assert _value(args, "-accel") == f"tcg,tb-size={bi.TB_CACHE_MIB}"
    assert ("-cpu" in args) == (cpu is not None) and (cpu is None or _value(args, "-cpu") == cpu)
    assert (_value(args, "-m"), _value(args, "-smp")) == ("384", "2")
    assert (_value(args, "-kernel"), _value(args, "-initrd")) == (f"/board/{arch}/vmlinuz", "/work/initrd.img")
    # the same kernel command line as the libvirt boards (render/domain.guest_domain_context)
    assert _value(args, "-append") == f"console={console} quiet loglevel=3 panic=-1"
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in args
    assert _value(args, "-display") == "none" and _value(args, "-nic") == "none"
    assert "-netdev" not in args and "-device" not in args and "-monitor" not in args
    assert _value(args, "-serial") == "chardev:console" and _value(args, "-chardev").startswith("stdio,id=console")
    assert _value(args, "-L") == bi.FIRMWARE_DIR
    assert _value(args, "-sandbox").startswith("on,")


def test_qemu_args_refuse_an_unknown_arch_or_machine() -> None:
    with pytest.raises(BackendError, match=r"^unknown guest arch 'riscv64': use one of amd64, arm64$"):
        bi.qemu_args("riscv64", "virt", 1, 256, "k", "i")
    with pytest.raises(BackendError, match=r"^'virt' is not a amd64 machine: use q35 or pc$"):
        bi.qemu_args("amd64", "virt", 1, 256, "k", "i")


def test_the_image_knows_its_arches_and_boots_from_the_shared_initrd() -> None:
    image = bi.QemuImage("r", ("arm64",), {"arm64": bi.image_binary("arm64")}, {"arm64": bi.image_kernel("arm64")})
    args = image.args("arm64", "virt", 1, 512)
    assert _value(args, "-kernel") == "/board/arm64/vmlinuz" and _value(args, "-initrd") == bi.BOARD_INITRD
    with pytest.raises(BackendError, match=r"has no amd64 emulator \(it has arm64\)"):
        image.args("amd64", "q35", 1, 512)
    assert bi.INIT_COMMAND == ("/bin/busybox", "cp", "/board/initrd.img", "/work/")
    assert bi.container_memory_mib(512) == 512 + bi.TB_CACHE_MIB + bi.QEMU_OVERHEAD_MIB


def test_ldd_output_is_read_and_a_missing_library_is_one_line() -> None:
    text = ("\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n"
            "\t/lib64/ld-linux-x86-64.so.2 (0x00007f3b)\n")
    assert bi.parse_ldd("/usr/bin/q", text) == ["/lib/x86_64-linux-gnu/libz.so.1", "/lib64/ld-linux-x86-64.so.2"]
    with pytest.raises(BackendError) as err:
        bi.parse_ldd("/usr/bin/qemu-system-x86_64", text + "\tlibslirp.so.0 => not found\n")
    assert str(err.value) == ("/usr/bin/qemu-system-x86_64 needs libslirp.so.0, which is not installed: reinstall "
                              "the package of qemu-system-x86_64")


# --- a fake machine: QEMU binaries, libraries, firmware and guests in tmp dirs -----------------------------------

class FakeMachine:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        usr = root / "usr"
        (usr / "bin").mkdir(parents=True)
        self.binaries = {}
        for arch, m in MACHINES.items():
            binary = usr / "bin" / str(m.binary)
            binary.write_bytes(f"qemu for {arch}".encode())
            binary.chmod(0o755)
            self.binaries[arch] = binary
        self.lib = root / "lib"
        self.lib.mkdir()
        (self.lib / "libz.so.1.2.13").write_bytes(b"zlib")
        (self.lib / "libz.so.1").symlink_to("libz.so.1.2.13")
        (self.lib / "ld.so").write_bytes(b"loader")
        (self.lib / "ld.so").chmod(0o755)
        # Debian's QEMU loads TCG as a module when it also has KVM (x86 on an x86 host)
        modules = usr / "lib" / "x86_64-linux-gnu" / "qemu"
        modules.mkdir(parents=True)
        (modules / "accel-tcg-x86_64.so").write_bytes(b"tcg module")
        share = usr / "share"
        (share / "qemu").mkdir(parents=True)
        (share / "seabios").mkdir()
        (share / "seabios" / "bios-256k.bin").write_bytes(b"seabios")
        (share / "qemu" / "bios-256k.bin").symlink_to("../seabios/bios-256k.bin")   # as Debian links some
        for name in ("kvmvapic.bin", "linuxboot_dma.bin"):
            (share / "qemu" / name).write_bytes(name.encode())
        self.guests = root / "guests"
        for arch in MACHINES:
            g = self.guests / arch
            g.mkdir(parents=True)
            (g / "guest.json").write_text(json.dumps({"kernelVersion": "6.1", "packages": {}, "modules": []}))
            (g / "vmlinuz").write_bytes(f"kernel {arch}".encode())
            (g / "base.cpio.gz").write_bytes(b"base")
            (g / "busybox").write_bytes(f"busybox {arch}".encode())
        monkeypatch.setenv("HYBRIDORCH_GUEST_DIR", str(self.guests))
        monkeypatch.setattr(host, "HOST_ARCH", "amd64")
        monkeypatch.setattr(host, "qemu_binary", lambda arch: str(self.binaries[arch]))
        monkeypatch.setattr(bi, "FIRMWARE_SEARCH", ())
        monkeypatch.setattr(bi, "shared_libraries",
                            lambda binary: [str(self.lib / "libz.so.1"), str(self.lib / "ld.so")])


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    return FakeMachine(tmp_path, monkeypatch)


def test_the_qemu_image_holds_what_qemu_opens_at_the_paths_qemu_args_use(machine: FakeMachine) -> None:
    recipe = bi.qemu_image_recipe(["arm64", "amd64", "arm64"])
    files = {dest: (src.read_bytes(), mode) for dest, (src, mode) in recipe.files.items()}
    assert files["/usr/bin/qemu-system-x86_64"] == (b"qemu for amd64", 0o755)
    assert files["/usr/bin/qemu-system-aarch64"] == (b"qemu for arm64", 0o755)
    assert files[str(machine.lib / "libz.so.1")] == (b"zlib", 0o644)        # the symlink's target, at its own path
    assert files["/usr/share/qemu/bios-256k.bin"] == (b"seabios", 0o644)     # dereferenced into the -L directory
    assert files["/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"] == (b"tcg module", 0o644)
    assert {"/usr/share/qemu/kvmvapic.bin", "/usr/share/qemu/linuxboot_dma.bin"} <= set(files)
    assert files["/board/amd64/vmlinuz"][0] == b"kernel amd64" and files["/board/arm64/vmlinuz"][0] == b"kernel arm64"
    assert files["/bin/busybox"] == (b"busybox amd64", 0o755)                # the host's arch, not the guests'
    assert recipe.ref.startswith("hybridorch.local/soc-qemu:") and len(recipe.ref.rsplit(":", 1)[1]) == 16
    assert '"dev.hybridorch.qemu-arches"="amd64,arm64"' in recipe.dockerfile
    assert '"app.kubernetes.io/managed-by"="hybridorch"' in recipe.dockerfile
    assert "USER 65534:65534" in recipe.dockerfile
    # an arm64 board needs no firmware
    assert not any(d.startswith("/usr/share/qemu") for d in bi.qemu_image_recipe(["arm64"]).files)


def test_the_tag_changes_with_an_input_file_and_only_then(machine: FakeMachine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ref = bi.qemu_image_recipe(["amd64", "arm64"]).ref
    assert bi.qemu_image_recipe(["arm64", "amd64"]).ref == ref                # the order asked for does not matter
    os.utime(machine.binaries["amd64"], (1, 1))                              # a touch alone changes no content
    assert bi.qemu_image_recipe(["amd64", "arm64"]).ref == ref
    assert bi.qemu_image_recipe(["arm64"]).ref != ref
    changes = [machine.binaries["arm64"], machine.lib / "libz.so.1.2.13",
               machine.root / "usr/share/seabios/bios-256k.bin", machine.guests / "arm64" / "vmlinuz",
               machine.guests / "amd64" / "busybox"]
    seen = {ref}
    for path in changes:
        old = path.read_bytes()
        path.write_bytes(old[:-1] + b"X")                                     # same size, other content
        new = bi.qemu_image_recipe(["amd64", "arm64"]).ref
        assert new not in seen, path
        seen.add(new)
        path.write_bytes(old)
        assert bi.qemu_image_recipe(["amd64", "arm64"]).ref == ref
    monkeypatch.setattr(bi, "RECIPE_VERSION", bi.RECIPE_VERSION + 1)
    assert bi.qemu_image_recipe(["amd64", "arm64"]).ref != ref


def test_a_missing_qemu_names_its_package_before_docker_is_asked(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDORCH_QEMU_BINARY", "qemu-system-nowhere")

    def no_docker(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("docker was asked")

    monkeypatch.setattr(proc, "run", no_docker)
    with pytest.raises(BackendError) as err:
        bi.qemu_image(["arm64"])
    assert str(err.value) == "QEMU is not installed (qemu-system-nowhere not found): apt-get install qemu-system-arm"
    assert err.value.lines() == [str(err.value)]


def test_missing_firmware_and_missing_busybox_name_the_fix(machine: FakeMachine,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (machine.root / "usr/share/seabios/bios-256k.bin").unlink()
    with pytest.raises(BackendError, match=r"^QEMU firmware bios-256k.bin is not in .*: apt-get install seabios$"):
        bi.qemu_image_recipe(["amd64"])
    (machine.guests / "amd64" / "guest.json").unlink()
    with pytest.raises(BackendError, match=r"python3 -m hybridorch.vm.guest fetch amd64"):
        bi.qemu_image_recipe(["arm64"])   # the busybox is the host's (amd64) guest's


def test_board_image_is_named_by_plan_and_initrd_hash(machine: FakeMachine, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"initrd one")
    recipe = bi.board_image_recipe("soc-arm64", initrd)
    assert recipe.ref == f"hybridorch.local/soc-board-soc-arm64:{hashlib.sha256(b'initrd one').hexdigest()[:16]}"
    assert {d: (s.read_bytes(), m) for d, (s, m) in recipe.files.items()} == {
        "/bin/busybox": (b"busybox amd64", 0o755), "/board/initrd.img": (b"initrd one", 0o644)}
    assert '"dev.hybridorch.soc-plan"="soc-arm64"' in recipe.dockerfile and "USER" not in recipe.dockerfile
    initrd.write_bytes(b"initrd two")
    assert bi.board_image_recipe("soc-arm64", initrd).ref != recipe.ref
    with pytest.raises(BackendError, match=r"cannot name an image"):
        bi.board_image_recipe("Bad_Name", initrd)


class FakeDocker:
    """`docker image inspect` and `docker build` as an engine holding `images` would answer them."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, str]] = {}
        self.builds: list[list[str]] = []
        self.contexts: list[dict[str, tuple[bytes, int]]] = []

    def run(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if cmd[:3] == ["docker", "image", "inspect"]:
            ref = cmd[-1]
            if ref not in self.images:
                return subprocess.CompletedProcess(cmd, 1, "", f"Error: No such image: {ref}\n")
            return subprocess.CompletedProcess(cmd, 0, json.dumps(self.images[ref]) + "\n", "")
        assert cmd[:2] == ["docker", "build"], cmd
        self.builds.append(cmd)
        context = Path(cmd[-1])
        self.contexts.append({str(p.relative_to(context)): (p.read_bytes(), p.stat().st_mode & 0o777)
                              for p in context.rglob("*") if p.is_file()})
        assert all((p.stat().st_mode & 0o777) == 0o755 for p in (context / "rootfs").rglob("*") if p.is_dir())
        labels: dict[str, str] = {}
        dockerfile = (context / "Dockerfile").read_text()
        for term in dockerfile.split("LABEL ", 1)[1].splitlines()[0].split(" "):
            key, value = term.split("=", 1)
            labels[json.loads(key)] = json.loads(value)
        self.images[cmd[cmd.index("-t") + 1]] = labels
        return subprocess.CompletedProcess(cmd, 0, "sha256:abc\n", "")


def test_images_are_built_once_from_a_context_that_is_removed(machine: FakeMachine, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    docker = FakeDocker()
    monkeypatch.setattr(proc, "run", docker.run)
    image = bi.qemu_image(iter(["arm64", "amd64"]))           # any iterable, even one read only once
    assert image.arches == ("amd64", "arm64")
    assert image.binaries == {"amd64": "/usr/bin/qemu-system-x86_64", "arm64": "/usr/bin/qemu-system-aarch64"}
    assert image.kernels == {"amd64": "/board/amd64/vmlinuz", "arm64": "/board/arm64/vmlinuz"}
    assert len(docker.builds) == 1
    context = docker.contexts[0]
    assert context["rootfs/usr/bin/qemu-system-aarch64"] == (b"qemu for arm64", 0o755)
    assert context["rootfs/usr/share/qemu/bios-256k.bin"] == (b"seabios", 0o644)
    assert "Dockerfile" in context
    assert not Path(docker.builds[0][-1]).exists()
    assert bi.image_arches(image.ref) == ("amd64", "arm64")
    assert bi.qemu_image(["amd64", "arm64"]) == image and len(docker.builds) == 1   # unchanged: not built again
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"initrd")
    ref = bi.board_image("soc-amd64", initrd)
    assert bi.board_image("soc-amd64", initrd) == ref and len(docker.builds) == 2
    assert bi.image_arches(ref) is None and bi.image_arches("hybridorch.local/soc-qemu:absent") is None


def test_a_failed_build_is_one_line_and_leaves_no_context(machine: FakeMachine, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    contexts: list[Path] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if cmd[:3] == ["docker", "image", "inspect"]:
            return subprocess.CompletedProcess(cmd, 1, "", "Error: No such image: x\n")
        contexts.append(Path(cmd[-1]))
        raise BackendError(f"{kwargs['what']}: no space left on device")

    monkeypatch.setattr(proc, "run", run)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"initrd")
    with pytest.raises(BackendError, match=r"^building image hybridorch.local/soc-board-p:[0-9a-f]{16}: no space"):
        bi.board_image("p", initrd)
    assert contexts and not contexts[0].exists()


def test_an_engine_that_does_not_answer_is_not_taken_for_a_missing_image(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n"
    monkeypatch.setattr(proc, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", refused))
    with pytest.raises(BackendError, match=r"^docker image inspect r: Cannot connect to the Docker daemon"):
        bi.image_arches("r")
