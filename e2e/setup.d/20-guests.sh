#!/usr/bin/env bash
# Fetch the local VM guests (Debian kernel, busybox-static, runc of amd64 and arm64) into
# ~/.cache/hybridorch/guests/<arch>/ with apt-get download + dpkg-deb -x; never installs them. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
command -v dpkg-deb >/dev/null
cd "$root"
python3 -m hybridorch.vm.guest fetch amd64 arm64
