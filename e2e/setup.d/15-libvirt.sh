#!/usr/bin/env bash
# Make sure the libvirt daemon answers on qemu:///system: start Debian's virtlogd and libvirtd in the background
# when none is running (hosts and CI runners without systemd), like 10-docker.sh does for dockerd. Idempotent;
# the daemons' logs go to ~/.cache/hybridorch/libvirtd.log.
set -euo pipefail
cache="${HOME}/.cache/hybridorch"
mkdir -p "$cache"
log="$cache/libvirtd.log"

answers() { virsh -c qemu:///system version >/dev/null 2>&1; }

if [[ -c /dev/kvm ]] && getent group kvm >/dev/null; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi
if answers; then
  echo "libvirt: daemon already running"
  exit 0
fi
for bin in libvirtd virtlogd virsh; do
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "libvirt: $bin not installed (apt-get install libvirt-daemon-system libvirt-clients passt)" >&2
    exit 1
  fi
done
# what libvirt-daemon-system's maintainer scripts create; a container image may have skipped them
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt >/dev/null || groupadd --system libvirt
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --gid kvm --home-dir /var/lib/libvirt --no-create-home --shell /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /run/libvirt
# what udev's rule does on a normal host: without it libvirt finds /dev/kvm unusable for its qemu user, calls
# its cached QEMU capabilities outdated and re-probes them on every start (a minute per `virsh start`)
if [[ -c /dev/kvm ]]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi

if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  systemctl start virtlogd libvirtd || true
fi
if ! answers; then
  echo "libvirt: starting virtlogd and libvirtd (log: $log)"
  # -d daemonizes; each refuses a second copy through its pid file, so a running one is left alone
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || setsid libvirtd -d >>"$log" 2>&1 </dev/null
fi
for _ in $(seq 1 60); do
  if answers; then
    echo "libvirt: daemon ready ($(virsh -c qemu:///system version 2>/dev/null | sed -n 's/^Running hypervisor: //p'))"
    exit 0
  fi
  sleep 0.5
done
echo "libvirt: libvirtd did not answer within 30 s; last log lines:" >&2
tail -n 20 "$log" >&2 || true
exit 1
