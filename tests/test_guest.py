"""Guest building without QEMU: the cpio writer (checked with the real `cpio` tool), module dependency reading
from ELF .modinfo, the /init script, OCI configs, the @@HYB console protocol (written by sh, read by
console.py) and the setup command line."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from hybridorch.errors import BackendError
from hybridorch.vm import guest
from hybridorch.vm import console
from hybridorch.vm.console import READY_MARKER
from hybridorch.vm.guestimage import check_arch, load_guest, modinfo_depends, module_closure
from hybridorch.vm.initramfs import ContainerRun, CpioWriter, GuestProgram, busybox_rootfs, init_script, oci_config


def cpio_list(data: bytes) -> list[str]:
    out = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True)
    return out.stdout.decode().splitlines()


def test_cpio_archive_is_read_by_cpio_tool(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("a/b/hello.txt", b"hello\n", 0o644)
    w.file("bin/tool", b"\x7fELF" + b"x" * 13, 0o755)   # odd length: exercises the 4-byte padding
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    w.close()
    listing = "\n".join(cpio_list(buf.getvalue()))
    for name in ("a", "a/b", "a/b/hello.txt", "bin/tool", "bin/sh -> busybox", "dev/console"):
        assert name in listing
    assert any(line.startswith("crw-------") and "dev/console" in line for line in listing.splitlines())
    assert any(line.startswith("-rwxr-xr-x") and "bin/tool" in line for line in listing.splitlines())
    subprocess.run(["cpio", "-id", "--quiet", "a/b/hello.txt", "bin/tool"], input=buf.getvalue(), cwd=tmp_path,
                   check=True)
    assert (tmp_path / "a/b/hello.txt").read_bytes() == b"hello\n"
    assert (tmp_path / "bin/tool").read_bytes() == b"\x7fELF" + b"x" * 13


def test_cpio_from_directory_and_tar(tmp_path: Path) -> None:
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hi\n")
    (src / "link").symlink_to("etc/motd")
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        info = tarfile.TarInfo("./usr/bin/app")
        payload = b"#!/bin/sh\necho app\n"
        info.size, info.mode = len(payload), 0o755
        tar.addfile(info, io.BytesIO(payload))
        dev = tarfile.TarInfo("./dev/null")
        dev.type = tarfile.CHRTYPE
        tar.addfile(dev)
    tar_buf.seek(0)
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.add_tree("c/one/rootfs", src)
    with tarfile.open(fileobj=tar_buf) as tar:
        w.add_tar("c/two/rootfs", tar)
    w.close()
    listing = "\n".join(cpio_list(buf.getvalue()))
    assert "c/one/rootfs/etc/motd" in listing and "c/one/rootfs/link -> etc/motd" in listing
    assert "c/two/rootfs/usr/bin/app" in listing
    assert "c/two/rootfs/dev/null" not in listing  # runc makes /dev; device nodes from images are skipped


def fake_module(depends: str) -> bytes:
    """A minimal little-endian ELF64 with a .modinfo section, like a kernel module's."""
    modinfo = f"license=GPL\0depends={depends}\0vermagic=6.1\0".encode()
    shstr = b"\0.shstrtab\0.modinfo\0"
    data_off = 64
    shstr_off = data_off + len(modinfo)
    sh_off = shstr_off + len(shstr)
    sh_off += -sh_off % 8
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 1)
    body = header + modinfo + shstr
    body += b"\0" * (sh_off - len(body))
    null = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    shstrtab = struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    modinfo_sh = struct.pack("<IIQQQQIIQQ", 11, 1, 2, 0, data_off, len(modinfo), 0, 0, 1, 0)
    return body + null + shstrtab + modinfo_sh


def test_modinfo_depends_reads_the_elf_section() -> None:
    assert modinfo_depends(fake_module("virtio,virtio_ring")) == ["virtio", "virtio_ring"]
    assert modinfo_depends(fake_module("")) == []
    with pytest.raises(ValueError):
        modinfo_depends(b"not an elf")


def test_module_closure_puts_dependencies_first_and_skips_builtins() -> None:
    mods = {"virtio_net": ["net_failover", "virtio"], "net_failover": ["failover"], "failover": [],
            "virtio": ["virtio_ring"], "virtio_ring": [], "virtio_pci": ["virtio", "virtio_ring"]}
    order = module_closure(["virtio_pci", "virtio-net", "virtio_mmio"], mods)
    assert order == ["virtio_ring", "virtio", "virtio_pci", "failover", "net_failover", "virtio_net"]


def test_init_script_for_a_vm_serves_http_on_every_port() -> None:
    script = init_script(GuestProgram("legacy", http_ports=(80, 8080)))
    assert "httpd -p 80 -h /srv/www" in script and "httpd -p 8080 -h /srv/www" in script
    assert "<h1>legacy</h1>" in script and READY_MARKER in script
    assert "ip addr add 10.0.2.15/24 dev eth0" in script
    assert "poweroff" not in script  # a service guest keeps running


def test_init_script_runs_test_containers_then_powers_off() -> None:
    program = GuestProgram("plan", containers=(ContainerRun("t1", ("uname", "-m"), "busybox", timeout=7),),
                           services=False, network=False)
    script = init_script(program)
    assert "runc_one t1 7" in script and "runc run --no-pivot $1" in script
    assert script.rstrip().endswith("poweroff -f")
    assert "eth0" not in script
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)  # valid shell syntax


def test_oci_config_isolates_tests_and_shares_network_for_services() -> None:
    test = oci_config(ContainerRun("t", ("true",), "busybox", timeout=5), "arm64")
    kinds = {ns["type"] for ns in test["linux"]["namespaces"]}  # type: ignore[index]
    assert {"pid", "mount", "network", "cgroup", "uts", "ipc"} <= kinds
    service = oci_config(ContainerRun("s", ("httpd",), "busybox", host_network=True), "arm64")
    assert "network" not in {ns["type"] for ns in service["linux"]["namespaces"]}  # type: ignore[index]
    assert json.loads(json.dumps(test))["process"]["args"] == ["true"]
    assert test["root"] == {"path": "rootfs", "readonly": False}
    hardened = oci_config(ContainerRun("s", ("httpd",), "busybox", read_only=True), "arm64")
    assert hardened["root"]["readonly"] is True  # type: ignore[index]
    assert {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]} \
        in hardened["mounts"]  # type: ignore[operator]


def test_busybox_rootfs_has_a_shell() -> None:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    busybox_rootfs(w, "r", b"BB")
    w.close()
    listing = "\n".join(cpio_list(buf.getvalue()))
    assert "r/bin/sh -> busybox" in listing and "r/etc/passwd" in listing


def test_missing_guest_names_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDORCH_GUEST_DIR", str(tmp_path))
    with pytest.raises(BackendError, match=r"python3 -m hybridorch.vm.guest fetch arm64"):
        load_guest("arm64")


def test_riscv64_is_rejected_with_the_reason() -> None:
    from hybridorch.core.runtime import guest_refusal

    # one text, the same for local VMs and soc-test boards
    with pytest.raises(BackendError) as err:
        check_arch("riscv64")
    assert str(err.value) == guest_refusal("riscv64")
    assert "Debian 12 ships no riscv64" in str(err.value) and "use amd64 or arm64" in str(err.value)
    assert guest_refusal("amd64") is None and guest_refusal("m68k") is None


def test_console_protocol_written_by_the_guest_shell_is_read_back(tmp_path: Path) -> None:
    # the very shell lines /init uses, run by a real sh: what console.py writes, console.py parses
    (tmp_path / "t1.out").write_bytes(b"hello from t1\n" * 20)   # several base64 lines
    script = "\n".join([console.say_booted(), console.say_ready(),
                        console.say_start("t1", "1.00"), console.say_output("t1", str(tmp_path / "t1.out")),
                        console.say_result("t1", "3", "0", "1.00", "3.50"), "echo 'kernel noise'",
                        console.say_result("t2", "0", "1", "2.00", "2.25"), console.say_done()])
    lines = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert console.is_booted(lines[0]) and not console.is_booted("kernel noise")
    assert console.shows_ready("\n".join(lines)) and console.is_done(lines[-1])
    assert [ln for ln in lines if console.is_result(ln)] == [lines[-4], lines[-2]]
    t1, t2, t3 = console.test_reports(lines, ["t1", "t2", "t3"])
    assert (t1.exit_code, t1.timed_out, t1.seconds, t1.output) == (3, False, 2.5, "hello from t1\n" * 20)
    assert (t2.exit_code, t2.timed_out, t2.output) == (0, True, "")
    assert t3.exit_code is None   # no RESULT: the guest stopped before it


def test_init_script_speaks_only_the_console_protocol() -> None:
    script = init_script(GuestProgram("p", containers=(ContainerRun("t1", ("true",), "busybox", timeout=3),),
                                      services=False))
    for say in (console.say_booted(), console.say_done(), console.say_ready()):
        assert say in script
    assert console.say_result("$1", "$rc", "$to", "$start", "$end") in script


def test_guest_command_line_usage_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert guest.main([]) == 2
    assert "usage: python3 -m hybridorch.vm.guest fetch|show" in capsys.readouterr().err
    monkeypatch.setenv("HYBRIDORCH_GUEST_DIR", str(tmp_path))
    assert guest.main(["show", "arm64"]) == 4
    assert "python3 -m hybridorch.vm.guest fetch arm64" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_a_disk_boot_kernel_is_the_arch_tables(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vm.disks.build_kernel_boot asks apt for the arch's own kernel package (it asked for linux-image-amd64 for
    every arch); the apt run is replaced, so nothing is downloaded."""
    from hybridorch.core.runtime import ARCHES
    from hybridorch.vm import disks, guestimage

    asked: list[tuple[str, str]] = []

    class FakeApt:
        def __init__(self, apt_arch: str, work: Path) -> None:
            self.arch, self.lists = apt_arch, tmp_path
            (tmp_path / "x_Packages").write_text("")

        def resolve(self, package: str) -> str:
            asked.append((self.arch, package))
            raise BackendError("stop here")

    monkeypatch.setattr(guestimage, "Apt", FakeApt)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(BackendError, match="stop here"):
        disks.build_kernel_boot(tmp_path / "out", arch)
    assert asked == [(arch, ARCHES[arch].kernel_package)]
