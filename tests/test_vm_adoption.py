"""Adopting a domain a killed `up` left behind: libvirt's own description of a domain (`virsh dumpxml`) is known as
the one the rendered file defined, and a domain defined from any other file is not. The kill points themselves, with
real domains, are in e2e/test_concurrency.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridorch.vm.libvirt import boot_facts, name_in, same_boot

# domains rendered by `hybridorch render --target local` (a busybox guest; the shop's ledger-vm with its disk and
# NoCloud seed) and what libvirt 9.0 made of them: `virsh define FILE`, then `virsh dumpxml NAME`
DATA = Path(__file__).parent / "data" / "libvirt"


def _read(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize("guest", ["busybox", "disk"])
def test_libvirts_description_of_a_domain_is_known_as_the_rendered_file(guest: str) -> None:
    rendered, defined = _read(f"{guest}.rendered.xml"), _read(f"{guest}.defined.xml")
    assert rendered != defined           # ids, PCI addresses, defaults, KiB and the machine's full name added
    assert same_boot(rendered, defined)
    assert name_in(rendered) == name_in(defined) != ""


@pytest.mark.parametrize("guest, old, new", [
    ("busybox", '<memory unit="MiB">160</memory>', '<memory unit="MiB">192</memory>'),
    ("busybox", "<vcpu>1</vcpu>", "<vcpu>2</vcpu>"),
    ("busybox", '<domain type="qemu"', '<domain type="kvm"'),
    ("busybox", "<name>hyb-e2e-repro-probe-0</name>", "<name>hyb-e2e-repro-probe-1</name>"),
    ("busybox", 'key="hybridorch.dev/replica" value="0"', 'key="hybridorch.dev/replica" value="1"'),
    ("busybox", "e2e-repro/box/initrd.img", "e2e-repro/box.1/initrd.img"),
    ("busybox", "panic=-1</cmdline>", "panic=1</cmdline>"),
    ("busybox", "hostfwd=tcp:127.0.0.1:33719-:80", "hostfwd=tcp:127.0.0.1:33720-:80"),
    ("busybox", "e2e-repro/box/console.log", "e2e-repro/other/console.log"),
    ("disk", "ledger-vm/disk.qcow2", "ledger-vm/other.qcow2"),
    ("disk", "      <readonly/>\n", ""),
    ("disk", '<target dev="vdb"', '<target dev="vdc"'),
    ("disk", "<label>+0:+0</label>", "<label>+1000:+1000</label>"),
])
def test_a_domain_defined_from_another_file_is_not_the_rendered_one(guest: str, old: str, new: str) -> None:
    rendered = _read(f"{guest}.rendered.xml")
    assert old in rendered
    assert not same_boot(rendered.replace(old, new), _read(f"{guest}.defined.xml"))


def test_memory_is_compared_as_a_size_whatever_its_unit() -> None:
    gib = '<domain><name>x</name><memory unit="GiB">1</memory></domain>'
    kib = "<domain><name>x</name><memory unit='KiB'>1048576</memory></domain>"
    bare = "<domain><name>x</name><memory>1048576</memory></domain>"      # libvirt's default unit is KiB
    assert same_boot(gib, kib) and same_boot(gib, bare)
    assert not same_boot(gib, kib.replace("1048576", "1048577"))


def test_xml_that_does_not_parse_is_never_the_same_domain() -> None:
    assert boot_facts("<domain><name>x</name>") is None
    assert not same_boot("<domain><name>x</name>", "<domain><name>x</name>")
    assert name_in("<domain/>") == ""
