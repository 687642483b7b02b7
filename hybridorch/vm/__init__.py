"""The local VM engine, used by the qemu backend and soc-test (never the other way round): domain.py (what a
domain is made of, pure), libvirt.py (virsh), boot.py (start, console, readiness, one-shot runs), host.py (this
machine: QEMU binaries, KVM probe), disks.py (containerDisks, overlays, cloud-init seeds), image_export.py
(Docker images into a guest), and the busybox guest: guestimage.py (fetch, cache), initramfs.py (cpio, /init,
OCI bundles), console.py (the @@HYB protocol). The facts shared with other layers live in hybridorch/runtime.py."""
