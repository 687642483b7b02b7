#!/usr/bin/env bash
# Build the kind node image of the e2e cluster with no registry, and load it into the local Docker engine
# as hybridorch.local/kind-node:K8S_VERSION-HASH (HASH: the inputs below; rebuilt only when they change).
#   - root filesystem: Debian 12 from the configured apt sources (mmdebstrap): systemd, containerd 1.6,
#     runc, iptables, ipset, the CNI plugins ...; e2e/kind/node/ on top (entrypoint, units, containerd config)
#   - kubelet, kubeadm, kubectl from e2e/k8s/build.sh; crictl, the runc wrapper from build-tools.sh;
#     gVisor's runsc and containerd-shim-runsc-v1 from e2e/setup.d/12-gvisor.sh (runtime handler runsc)
#   - the images kubeadm v1.34 runs, made here FROM scratch from static Go binaries, saved as
#     /kind/images/preload.tar and imported into containerd when a node first boots
# Idempotent. Usage: e2e/kind/build-node-image.sh [--print-image]   (prints the image name)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.sh"
CACHE="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/kind/node"
export DOCKER_BUILDKIT=0  # the classic builder: FROM scratch + COPY needs no buildx plugin

# The inputs: every file of the node, the build scripts and versions (binaries follow from those).
inputs_hash() {
  (cd "$here" && find node build-node-image.sh build-tools.sh versions.sh pause runc-wrapper -type f | LC_ALL=C sort |
     while read -r f; do printf '%s %s\n' "$f" "$(stat -c %a "$f")"; cat "$f"; done
   cat "$here/../k8s/build.sh" "$here/../setup.d/12-gvisor.sh") | sha256sum | cut -c1-12
}
HASH=$(inputs_hash)
IMAGE="$NODE_REPO:$K8S_VERSION-$HASH"
if [[ "${1:-}" == "--print-image" ]]; then echo "$IMAGE"; exit 0; fi
if docker image inspect "$IMAGE" >/dev/null 2>&1; then echo "kind node image cached: $IMAGE"; exit 0; fi
mkdir -p "$CACHE"
if [[ -f "$CACHE/$HASH.tar" ]]; then
  docker load -i "$CACHE/$HASH.tar" >/dev/null
  echo "kind node image loaded from $CACHE/$HASH.tar: $IMAGE"; exit 0
fi

start=$(date +%s)
bash "$here/../k8s/build.sh"
bash "$here/build-tools.sh"
K8S_BIN=$(bash "$here/../k8s/build.sh" --print-dir)
TOOLS=$(bash "$here/build-tools.sh" --print-dir)
t_bins=$(date +%s)
WORK=$(mktemp -d /var/tmp/hybridorch-kind-node.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
log() { echo "[kind-node] $*"; }

log "root filesystem (mmdebstrap $DEBIAN_SUITE)"
packages=(systemd systemd-sysv dbus containerd runc containernetworking-plugins iptables ipset nftables iproute2
  ethtool socat conntrack mount util-linux kmod procps ca-certificates libseccomp2 bash findutils)
mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' "$DEBIAN_SUITE" "$ROOT" >"$WORK/mmdebstrap.log" 2>&1 \
  || { tail -20 "$WORK/mmdebstrap.log" >&2; exit 1; }
t_rootfs=$(date +%s)

log "node files, kubelet/kubeadm/kubectl $K8S_VERSION, crictl, runc wrapper"
cp -a "$here/node/." "$ROOT/"
install -m 0755 "$K8S_BIN/kubelet" "$K8S_BIN/kubeadm" "$K8S_BIN/kubectl" "$ROOT/usr/bin/"
install -m 0755 "$TOOLS/crictl" "$TOOLS/runc-wrapper" "$ROOT/usr/local/bin/"
# gVisor: runsc and its containerd shim (RuntimeClass handler runsc), built by e2e/setup.d/12-gvisor.sh
bash "$here/../setup.d/12-gvisor.sh" >&2
GVISOR=$(bash "$here/../setup.d/12-gvisor.sh" --print-dir)
install -m 0755 "$GVISOR/runsc" "$ROOT/usr/local/bin/"
# containerd runs node/usr/local/bin/containerd-shim-runsc-v1, which adapts the real shim to this node
install -D -m 0755 "$GVISOR/containerd-shim-runsc-v1" "$ROOT/usr/local/lib/gvisor/containerd-shim-runsc-v1"
echo "$K8S_VERSION" >"$ROOT/kind/version"
: >"$ROOT/etc/fstab"
chroot "$ROOT" systemctl enable containerd.service kubelet.service kind-preload-images.service >/dev/null 2>&1
# no consoles, udev or kernel module loading in a container
chroot "$ROOT" systemctl mask getty.target console-getty.service systemd-udevd.service \
  systemd-modules-load.service systemd-remount-fs.service >/dev/null 2>&1 || true

log "images for kubeadm, FROM scratch"
IMG="$WORK/images"
tags=()
# name tag entrypoint file...: a FROM-scratch image with the files under /usr/local/bin (or / for "/x")
scratch_image() {
  local tag=$1 entry=$2; shift 2
  local ctx="$IMG/$(echo "$tag" | tr '/:' '__')"
  mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/usr/local/bin"
  chmod 1777 "$ctx/rootfs/tmp"
  local f
  for f in "$@"; do cp "$f" "$ctx/rootfs${entry%/*}/"; done
  if [[ -d "$ctx/extra" ]]; then cp -a "$ctx/extra/." "$ctx/rootfs/"; fi
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["$entry"]
DOCKERFILE
  docker build -q -t "$tag" "$ctx" >/dev/null
  tags+=("$tag")
}
R=registry.k8s.io
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  scratch_image "$R/$c:$K8S_VERSION" "/usr/local/bin/$c" "$K8S_BIN/$c"
done
scratch_image "$R/etcd:$ETCD_TAG" /usr/local/bin/etcd "$K8S_BIN/etcd"
scratch_image "$R/coredns/coredns:$COREDNS_VERSION" /coredns "$TOOLS/coredns"
scratch_image "$R/pause:$PAUSE_TAG" /pause "$TOOLS/pause"
# the node's own userland binaries (iptables-nft, ipset) with exactly the libraries they load, into DIR
node_userland() {
  local dir=$1 b n; shift
  mkdir -p "$dir/usr/sbin" "$dir/usr/lib" "$dir/usr/lib64" "$dir/usr/lib/x86_64-linux-gnu" "$dir/run"
  ln -sfn usr/lib "$dir/lib"; ln -sfn usr/lib64 "$dir/lib64"; ln -sfn usr/sbin "$dir/sbin"
  for b in "$@"; do cp "$ROOT/usr/sbin/$b" "$dir/usr/sbin/"; done
  for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$dir/usr/sbin/$n"
  done
  cp -a "$ROOT/usr/lib/x86_64-linux-gnu/xtables" "$dir/usr/lib/x86_64-linux-gnu/"
  chroot "$ROOT" sh -c "ldd $(printf '/usr/sbin/%s ' "$@") /usr/lib/x86_64-linux-gnu/xtables/*.so" |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u |
    while read -r lib; do
      real=$(chroot "$ROOT" readlink -f "$lib")
      mkdir -p "$dir$(dirname "$real")"; cp "$ROOT$real" "$dir$real"
      # /lib is usr/lib here too: link only names that do not already reach the copied file
      [[ -e "$dir$lib" ]] || { mkdir -p "$dir$(dirname "$lib")"; ln -s "$real" "$dir$lib"; }
    done
}
# kube-proxy (iptables mode) runs iptables: the node's own iptables-nft
node_userland "$IMG/$(echo "$R/kube-proxy:$K8S_VERSION" | tr '/:' '__')/extra" xtables-nft-multi
scratch_image "$R/kube-proxy:$K8S_VERSION" /usr/local/bin/kube-proxy "$K8S_BIN/kube-proxy"
# kube-router's firewall (node/kind/manifests/default-cni.yaml) runs iptables-nft, as kube-proxy does, and ipset
KUBE_ROUTER_IMAGE="hybridorch.local/kube-router:$KUBE_ROUTER_VERSION"
node_userland "$IMG/$(echo "$KUBE_ROUTER_IMAGE" | tr '/:' '__')/extra" xtables-nft-multi ipset
scratch_image "$KUBE_ROUTER_IMAGE" /usr/local/bin/kube-router "$TOOLS/kube-router"
grep -q "image: $KUBE_ROUTER_IMAGE\$" "$ROOT/kind/manifests/default-cni.yaml" ||
  { echo "error: node/kind/manifests/default-cni.yaml must run $KUBE_ROUTER_IMAGE (versions.sh)" >&2; exit 1; }

# what kubeadm v1.34 will ask for must be exactly what was built
want=$("$K8S_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
for w in $want; do
  # etcd is the one e2e/k8s/build.sh builds; cluster.yaml pins kubeadm's etcd imageTag to it
  [[ "$w" == "$R/etcd:"* ]] && w="$R/etcd:$ETCD_TAG"
  [[ " ${tags[*]} " == *" $w "* ]] || { echo "error: kubeadm expects $w, not built (built: ${tags[*]})" >&2; exit 1; }
done
mkdir -p "$ROOT/kind/images"
docker save -o "$ROOT/kind/images/preload.tar" "${tags[@]}"
docker rmi "${tags[@]}" >/dev/null  # they live in the node image; keep the engine's names for real pulls
t_images=$(date +%s)

log "importing $IMAGE"
tar -C "$ROOT" -c . | docker import --message "hybridorch kind node $K8S_VERSION (inputs $HASH)" - "$IMAGE-rootfs" >/dev/null
# docker import cannot set STOPSIGNAL: the image's settings go on in a build with no new layer
mkdir -p "$WORK/node-image"
cat >"$WORK/node-image/Dockerfile" <<DOCKERFILE
FROM $IMAGE-rootfs
ENV container=docker
# systemd shuts down cleanly on SIGRTMIN+3
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
DOCKERFILE
docker build -q -t "$IMAGE" "$WORK/node-image" >/dev/null
docker rmi "$IMAGE-rootfs" >/dev/null
rm -f "$CACHE"/*.tar
docker save -o "$CACHE/$HASH.tar" "$IMAGE"
end=$(date +%s)
timing="binaries=$((t_bins-start))s rootfs=$((t_rootfs-t_bins))s images=$((t_images-t_rootfs))s import+save=$((end-t_images))s total=$((end-start))s"
echo "$timing" >"$CACHE/build-time.txt"
log "built $IMAGE ($timing; $(du -h "$CACHE/$HASH.tar" | cut -f1) saved in $CACHE)"
