"""`python3 -m hybridorch.vm.guest fetch|show ARCH...`: the setup command that fetches the local busybox guests
into the cache (e2e/setup.d/20-guests.sh runs it). The guest itself lives in hybridorch/vm/: guestimage.py
(fetch, cache), initramfs.py (cpio, /init, OCI bundles), console.py (the @@HYB protocol)."""
from __future__ import annotations

import sys

from hybridorch.errors import BackendError, HybridorchError
from hybridorch.core.runtime import LOCAL_ARCHES
from hybridorch.vm.guestimage import fetch_guest, load_guest


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in ("fetch", "show"):
        print(f"usage: python3 -m hybridorch.vm.guest fetch|show ARCH...  (arches: {' '.join(LOCAL_ARCHES)})",
              file=sys.stderr)
        return 2
    force = "--force" in args
    try:
        for arch in [a for a in args[1:] if a != "--force"]:
            if args[0] == "fetch":
                try:
                    current = load_guest(arch)
                    if not force:
                        print(f"guest {arch}: cached ({current.kernel_version}) in {current.root}")
                        continue
                except BackendError:
                    pass
                guest = fetch_guest(arch, progress=lambda line: print(line, file=sys.stderr, flush=True))
            else:
                guest = load_guest(arch)
            print(f"guest {arch}: kernel {guest.kernel_version}, modules {len(guest.modules)}, "
                  f"packages {', '.join(f'{k}={v}' for k, v in guest.packages.items())} in {guest.root}")
    except HybridorchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
