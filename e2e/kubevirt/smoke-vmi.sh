#!/usr/bin/env bash
# Prove the KubeVirt that install.sh put on the e2e kind cluster runs a real VM: build a tiny containerDisk
# (FROM scratch: /disk/disk.qcow2, an ext4 root of static busybox whose init prints a marker, takes an address
# by DHCP and serves HTTP; /boot/vmlinuz and /boot/initrd.img, Debian's kernel and hybridorch's kernel-boot
# initramfs), load it into the nodes, start a VirtualMachineInstance from it under TCG and wait until the
# guest's serial console (KubeVirt's guest-console-log container) shows the marker and the guest answers HTTP.
# Usage: e2e/kubevirt/smoke-vmi.sh KUBECONFIG [--keep]   (--keep: leave the VMI running)
# Environment: HYBRIDORCH_KIND_CLUSTER (default hybridorch-e2e).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[[ $# -ge 1 && -f "$1" ]] || { echo "usage: $0 KUBECONFIG [--keep]" >&2; exit 2; }
export KUBECONFIG="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
KEEP="${2:-}"
CLUSTER="${HYBRIDORCH_KIND_CLUSTER:-hybridorch-e2e}"
CACHE="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/kubevirt/smoke"
NS=default VMI=hybridorch-smoke MARKER=HYBRIDORCH-KUBEVIRT-GUEST-UP
export DOCKER_BUILDKIT=0
log() { echo "[kubevirt-smoke] $*"; }
die() { echo "kubevirt-smoke: $*" >&2; exit 1; }
KUBECTL="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/k8s/v1.34.4/bin/kubectl"
[[ -x "$KUBECTL" ]] || KUBECTL=kubectl
k() { "$KUBECTL" "$@"; }

# the guest's /sbin/init: busybox only; the console line is what this script waits for
read -r -d '' INIT <<'SH' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
echo "HYBRIDORCH-KUBEVIRT-GUEST-UP kernel=$(uname -r) root=$(cat /etc/smoke-id)"
ip link set lo up; ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -s /etc/udhcpc.script && echo "guest: eth0 $(ip -4 -o addr show eth0 | awk '{print $4}')"
mkdir -p /run/www; echo "hybridorch smoke guest $(uname -r)" >/run/www/index.html
while :; do httpd -f -p 8080 -h /run/www; sleep 1; done
SH
read -r -d '' DHCP <<'SH' || true
#!/bin/busybox sh
case "$1" in bound|renew)
  ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "$router" ] && ip route add default via "${router%% *}" ;;
esac
SH
KEY=$(printf '%s\n%s\n' "$INIT" "$DHCP" | sha256sum | cut -c1-10)
IMAGE="hybridorch.local/kubevirt/smoke-disk:$KEY"
t0=$(date +%s)
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  if [[ ! -f "$CACHE/$KEY/.done" ]]; then
    rm -rf "$CACHE/$KEY"; mkdir -p "$CACHE/$KEY/root"
    W="$CACHE/$KEY"
    python3 -m hybridorch.vm.disks kernel-boot "$W" amd64 >/dev/null
    R="$W/root"
    mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,run,tmp}
    cp "$(python3 -c 'from hybridorch.core.images import static_busybox; print(static_busybox())')" "$R/bin/busybox"
    printf '%s\n' "$INIT" >"$R/sbin/init"; printf '%s\n' "$DHCP" >"$R/etc/udhcpc.script"
    chmod 755 "$R/sbin/init" "$R/etc/udhcpc.script"; echo "$KEY" >"$R/etc/smoke-id"
    mkfs.ext4 -q -F -L root -d "$R" "$W/disk.img" 16M >/dev/null
    qemu-img convert -O qcow2 "$W/disk.img" "$W/disk.qcow2"; rm -rf "$R" "$W/disk.img"
    touch "$W/.done"
  fi
  printf 'FROM scratch\nCOPY disk.qcow2 /disk/\nCOPY vmlinuz initrd.img /boot/\n' >"$CACHE/$KEY/Dockerfile"
  docker build -q -t "$IMAGE" "$CACHE/$KEY" >/dev/null 2>"$CACHE/$KEY/docker-build.err" ||
    { cat "$CACHE/$KEY/docker-build.err" >&2; die "docker build of $IMAGE failed"; }
fi
log "disk image $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')) in $(( $(date +%s) - t0 ))s"
python3 - "$CLUSTER" "$IMAGE" <<'PY'
import sys
from hybridorch.backends.kind import load_images
for line in load_images(sys.argv[1], sys.argv[2:], lambda event: None):
    print("  " + line)
PY

k -n "$NS" delete vmi "$VMI" --ignore-not-found --wait=true >/dev/null
t0=$(date +%s)
k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: $VMI
  labels: {app: $VMI}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    cpu: {cores: 1}
    resources:
      requests: {cpu: 100m, memory: 256Mi}
    firmware:
      kernelBoot:
        kernelArgs: "root=/dev/vda console=ttyS0"
        container:
          image: $IMAGE
          imagePullPolicy: Never
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    devices:
      disks:
        - name: root
          disk: {bus: virtio}
      interfaces:
        - name: default
          masquerade: {}
  networks:
    - name: default
      pod: {}
  volumes:
    - name: root
      containerDisk:
        image: $IMAGE
        imagePullPolicy: Never
EOF
phase=""
for _ in $(seq 1 150); do
  phase=$(k -n "$NS" get vmi "$VMI" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [[ "$phase" == Running || "$phase" == Failed || "$phase" == Succeeded ]] && break; sleep 2
done
if [[ "$phase" != Running ]]; then
  k -n "$NS" logs -l kubevirt.io=virt-launcher -c compute --tail=200 2>/dev/null | grep -av '"level":"info"' | tail -15 || true
  k -n "$NS" get vmi "$VMI" -o jsonpath='{.status.phase} {range .status.conditions[*]}{.type}={.status} {.message}; {end}{"\n"}' || true
  k -n "$NS" get pods -l kubevirt.io=virt-launcher -o wide || true
  k -n "$NS" describe pods -l kubevirt.io=virt-launcher | tail -30 || true
  die "VMI $VMI did not reach Running"
fi
t_run=$(( $(date +%s) - t0 ))
log "VMI $VMI Running ${t_run}s after creation (node $(k -n "$NS" get vmi "$VMI" -o jsonpath='{.status.nodeName}'))"
POD=$(k -n "$NS" get pods -l "kubevirt.io/created-by=$(k -n "$NS" get vmi "$VMI" -o jsonpath='{.metadata.uid}')" -o name | head -1)
line=""
for _ in $(seq 1 120); do
  line=$(k -n "$NS" logs "$POD" -c guest-console-log 2>/dev/null | grep -a "$MARKER" | head -1 || true)
  [[ -n "$line" ]] && break; sleep 1
done
[[ -n "$line" ]] || { k -n "$NS" logs "$POD" -c guest-console-log --tail=30 || true; die "no $MARKER on the guest console"; }
log "guest console $(( $(date +%s) - t0 ))s after creation: ${line//$'\r'/}"
ip=$(k -n "$NS" get vmi "$VMI" -o jsonpath='{.status.interfaces[0].ipAddress}')
answer=""
node=$(docker ps --filter "label=io.x-k8s.kind.cluster=$CLUSTER" --format '{{.Names}}' | head -1)
for _ in $(seq 1 60); do
  # pod IPs route from the node; bash's /dev/tcp needs no client in the node image
  answer=$(docker exec "$node" timeout 5 bash -c "exec 3<>/dev/tcp/$ip/8080 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 &&
    cat <&3" 2>/dev/null | tail -1 || true)
  [[ -n "$answer" ]] && break; sleep 2
done
log "guest HTTP at pod IP $ip:8080: ${answer:-no answer} ($(( $(date +%s) - t0 ))s after creation)"
k -n "$NS" logs "$POD" -c guest-console-log 2>/dev/null | grep -a 'guest:' | head -2 || true
if [[ "$KEEP" != "--keep" ]]; then k -n "$NS" delete vmi "$VMI" --wait=true >/dev/null; log "VMI deleted"; fi
