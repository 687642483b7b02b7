"""Guest building without QEMU: the cpio writer (checked with the real `cpio` tool), module dependency reading
from ELF .modinfo, the /init script and OCI configs."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from hybridorch.errors import BackendError
from hybridorch.guest import (READY_MARKER, ContainerRun, CpioWriter, GuestProgram, busybox_rootfs, check_arch,
                              init_script, load_guest, modinfo_depends, module_closure, oci_config)


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


def test_busybox_rootfs_has_a_shell() -> None:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    busybox_rootfs(w, "r", b"BB")
    w.close()
    listing = "\n".join(cpio_list(buf.getvalue()))
    assert "r/bin/sh -> busybox" in listing and "r/etc/passwd" in listing


def test_missing_guest_names_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDORCH_GUEST_DIR", str(tmp_path))
    with pytest.raises(BackendError, match=r"python3 -m hybridorch.guest fetch arm64"):
        load_guest("arm64")


def test_riscv64_is_rejected_with_the_reason() -> None:
    with pytest.raises(BackendError, match="Debian 12 ships no riscv64"):
        check_arch("riscv64")
