#!/usr/bin/env bash
# Build KubeVirt (pinned below) from source, offline, into local Docker images for the e2e kind cluster:
#   hybridorch.local/kubevirt/{virt-operator,virt-api,virt-controller,virt-exportproxy}:TAG   FROM scratch (static Go)
#   hybridorch.local/kubevirt/{virt-handler,virt-launcher}:TAG   FROM a Debian trixie root (libvirt 11, QEMU 10)
# TAG is KUBEVIRT_VERSION-HASH, HASH covering the source, Go, this directory's files: a change makes new images.
# Source, first found: $HYBRIDORCH_KUBEVIRT_SOURCE (a `git archive` tarball, checked against the pinned SHA-256,
# or a directory), the cached extracted source, `git clone` of the pinned tag. KubeVirt's code is never copied
# into this repository. Cache: ${HYBRIDORCH_CACHE:-~/.cache/hybridorch}/kubevirt (src/, KUBEVIRT_VERSION/).
# Idempotent: every stage is skipped when its stamp matches its inputs.
# Usage: e2e/kubevirt/build.sh [--print-dir | --print-tag | --print-images]
#   --print-dir: the build directory (bin/, build.env, build-time.txt); --print-tag / --print-images: without building
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

KUBEVIRT_VERSION="v1.9.0"
# sha256 of kubevirt-v1.9.0-src.tar.xz: `git archive` of kubevirt/kubevirt at tag v1.9.0 (79d34c17)
KUBEVIRT_SRC_SHA256="fdea8e4d51de7c48f2647581c3a8452af2bcefa39d7d69d76e4f0dad81ea47c4"
KUBEVIRT_GIT="https://github.com/kubevirt/kubevirt"
DEBIAN_SUITE="trixie"               # libvirt 11.3, libnbd 1.22: what the launcher's cgo needs (bookworm's libnbd is too old)
IMAGE_PREFIX="hybridorch.local/kubevirt"
GO="/usr/local/go/bin/go"
CACHE_ROOT="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/kubevirt"
OUT="$CACHE_ROOT/$KUBEVIRT_VERSION"
BIN="$OUT/bin"
export DOCKER_BUILDKIT=0  # the classic builder: FROM scratch + COPY needs no buildx plugin

# static Go commands (CGO_ENABLED=0, FROM scratch or copied into the trixie images)
STATIC_CMDS=(virt-operator virt-api virt-controller virt-exportproxy virt-chroot virt-launcher-monitor virt-freezer
  virt-probe virt-tail virt-launcher/libvirt-hook-client)
# cgo commands, built inside the trixie root: virt-launcher (libvirt, libnbd), virt-handler (linux/kvm.h)
CGO_CMDS=(virt-handler virt-launcher)
# what the node images hold (KubeVirt's hack/rpm-deps.sh launcherbase + handlerbase, in Debian's names);
# libvirt-daemon is the monolithic libvirtd: Debian ships no virtqemud (rootfs/usr/sbin/virtqemud adapts)
RUNTIME_PACKAGES=(bash libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-log qemu-system-x86
  qemu-utils ovmf seabios ipxe-qemu passt swtpm-tools nftables ncat iproute2 procps findutils tar util-linux
  virtiofsd xorriso libnbd0 libcap2-bin ca-certificates)
BUILD_PACKAGES=(gcc libc6-dev pkgconf libvirt-dev libnbd-dev linux-libc-dev ca-certificates)
STATIC_IMAGES=(virt-operator virt-api virt-controller virt-exportproxy)
NODE_IMAGES=(virt-handler virt-launcher)

log() { echo "[kubevirt] $*"; }
die() { echo "kubevirt: $*" >&2; exit 1; }
sha() { sha256sum | cut -c1-12; }

# --- the source: sets SRC (a directory) and SRC_ID (what identifies its content) ---------------------------------
# A tree's identity without reading 150 MB: its file list with sizes and times (a git checkout: its commit).
dir_id() {
  if git -C "$1" rev-parse HEAD >/dev/null 2>&1; then echo "git:$(git -C "$1" rev-parse HEAD)$(git -C "$1" status \
    --porcelain --untracked-files=no | sha)"; else echo "dir:$(find "$1" -type f -printf '%P %s %T@\n' | LC_ALL=C sort | sha)"; fi
}
resolve_source() {
  local given="${HYBRIDORCH_KUBEVIRT_SOURCE:-}" cached="$CACHE_ROOT/src"
  if [[ -n "$given" && -d "$given" ]]; then
    SRC="$(cd "$given" && pwd)"; SRC_ID="$(dir_id "$SRC")"; return
  fi
  if [[ -n "$given" && -f "$given" ]]; then
    local id="tar:$KUBEVIRT_SRC_SHA256" got
    got=$(sha256sum "$given" | cut -d' ' -f1)  # every run (0.1 s): the file handed in is what gets built
    [[ "$got" == "$KUBEVIRT_SRC_SHA256" ]] ||
      die "$given has SHA-256 $got, not the pinned $KUBEVIRT_SRC_SHA256 (KubeVirt $KUBEVIRT_VERSION)"
    if [[ -f "$cached/.hybridorch-source" && "$(cat "$cached/.hybridorch-source")" == "$id" ]]; then
      SRC="$cached"; SRC_ID="$id"; return
    fi
    local t0; t0=$(date +%s)
    rm -rf "$cached.new"; mkdir -p "$cached.new"
    # a `git archive` tarball holds one top directory (kubevirt-v1.9.0/); a plain one may not
    tar -xf "$given" -C "$cached.new"
    local top=("$cached.new"/*)
    if [[ ${#top[@]} -eq 1 && -d "${top[0]}" ]]; then mv "${top[0]}" "$cached.tmp"; rm -rf "$cached.new"; mv "$cached.tmp" "$cached.new"; fi
    [[ -f "$cached.new/go.mod" && -d "$cached.new/vendor" ]] || die "$given holds no KubeVirt tree with vendor/"
    echo "$id" >"$cached.new/.hybridorch-source"
    rm -rf "$cached"; mv "$cached.new" "$cached"
    T_EXTRACT=$(( $(date +%s) - t0 ))
    log "source: extracted $given in ${T_EXTRACT}s"
    SRC="$cached"; SRC_ID="$id"; return
  fi
  [[ -z "$given" ]] || die "HYBRIDORCH_KUBEVIRT_SOURCE=$given is neither a file nor a directory"
  if [[ -f "$cached/.hybridorch-source" ]]; then SRC="$cached"; SRC_ID="$(cat "$cached/.hybridorch-source")"; return; fi
  rm -rf "$cached.new"
  if timeout 900 git clone -q --depth 1 --branch "$KUBEVIRT_VERSION" "$KUBEVIRT_GIT" "$cached.new" >/dev/null 2>&1; then
    echo "git:$(git -C "$cached.new" rev-parse HEAD)" >"$cached.new/.hybridorch-source"
    rm -rf "$cached"; mv "$cached.new" "$cached"
    SRC="$cached"; SRC_ID="$(cat "$cached/.hybridorch-source")"; return
  fi
  rm -rf "$cached.new"
  echo "kubevirt: no KubeVirt $KUBEVIRT_VERSION source: set HYBRIDORCH_KUBEVIRT_SOURCE to its tarball or directory" >&2
  exit 2
}

# --- input hashes ------------------------------------------------------------------------------------------------
files_hash() {  # what the images are made of besides the source: this script and rootfs/
  (cd "$here" && find build.sh rootfs -type f | LC_ALL=C sort | while read -r f; do
     printf '%s %s\n' "$f" "$(stat -c %a "$f")"; cat "$f"; done) | sha
}
go_id() { "$GO" version 2>/dev/null || echo "no-go"; }

mkdir -p "$CACHE_ROOT"
T_EXTRACT=0
case "${1:-}" in
  --print-dir) echo "$OUT"; exit 0 ;;
  --print-tag|--print-images)
    resolve_source >/dev/null
    TAG="$KUBEVIRT_VERSION-$(printf '%s\n%s\n%s\n' "$SRC_ID" "$(go_id)" "$(files_hash)" | sha | cut -c1-10)"
    if [[ "$1" == --print-tag ]]; then echo "$TAG"; else
      for n in "${STATIC_IMAGES[@]}" "${NODE_IMAGES[@]}"; do echo "$IMAGE_PREFIX/$n:$TAG"; done; fi
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-dir | --print-tag | --print-images]" >&2; exit 2 ;;
esac

start=$(date +%s)
resolve_source
[[ -x "$GO" ]] || die "Go not found at $GO"
TAG="$KUBEVIRT_VERSION-$(printf '%s\n%s\n%s\n' "$SRC_ID" "$(go_id)" "$(files_hash)" | sha | cut -c1-10)"
mkdir -p "$BIN" "$OUT/log" "$OUT/stamps" "$OUT/roots"
# go.work (., staging/src/kubevirt.io/{api,client-go}) with vendor/: workspace mode, so GOWORK stays unset
unset GOWORK
export GOCACHE="$CACHE_ROOT/gocache" GOFLAGS="-mod=vendor -buildvcs=false" GOPROXY=off GOTOOLCHAIN=local
# version stamps, as KubeVirt's hack/version.sh sets them (the operator reports and compares them)
COMMIT=unknown
[[ "$SRC_ID" == "tar:$KUBEVIRT_SRC_SHA256" ]] && COMMIT=79d34c1762169e5b0370ec491cef5ca12e6b504c
[[ "$SRC_ID" == git:* ]] && COMMIT=$(echo "${SRC_ID#git:}" | cut -c1-40)
LDFLAGS="-s -w"
for v in "gitVersion=$KUBEVIRT_VERSION" "gitCommit=$COMMIT" "gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do
  LDFLAGS+=" -X kubevirt.io/client-go/version.$v"
done

stamp_ok() { [[ -f "$OUT/stamps/$1" && "$(cat "$OUT/stamps/$1")" == "$2" ]]; }
stamp_set() { echo "$2" >"$OUT/stamps/$1"; }
TIMES="$OUT/log/times.txt"; : >"$TIMES"
timed() { echo "$1=$2s" >>"$TIMES"; }

# --- stage 1: static Go commands, one go build each (timed apart; the shared cache compiles common code once) -----
STATIC_KEY=$(printf '%s\n' "$SRC_ID" "$(go_id)" "$LDFLAGS" "${STATIC_CMDS[@]}" manifest-templator | sha)
build_static() {
  stamp_ok static "$STATIC_KEY" && { log "static Go commands cached"; return 0; }
  local c t0
  for c in "${STATIC_CMDS[@]}" tools/manifest-templator; do
    t0=$(date +%s)
    local pkg="./cmd/$c"; [[ "$c" == tools/* ]] && pkg="./$c"
    (cd "$SRC" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags="$LDFLAGS" -o "$BIN/" "$pkg") >>"$OUT/log/static.log" 2>&1 ||
      { tail -20 "$OUT/log/static.log" >&2; return 1; }
    timed "go:${c##*/}" $(( $(date +%s) - t0 ))
    log "built ${c##*/} in $(( $(date +%s) - t0 ))s"
  done
  stamp_set static "$STATIC_KEY"
}

# --- stage 2: the Debian trixie roots (build: gcc + -dev packages; runtime: the node images' base) -------------------
ROOT_BUILD="$OUT/roots/build"
ROOT_RUN="$OUT/roots/runtime"
BUILD_ROOT_KEY=$(printf '%s\n' "$DEBIAN_SUITE" "${BUILD_PACKAGES[@]}" | sha)
RUN_ROOT_KEY=$(printf '%s\n' "$DEBIAN_SUITE" "${RUNTIME_PACKAGES[@]}" | sha)
mmdebstrap_root() {  # NAME DIR PACKAGE...
  local name=$1 dir=$2; shift 2
  rm -rf "$dir"
  mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "$*")" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' "$DEBIAN_SUITE" "$dir" >"$OUT/log/mmdebstrap-$name.log" 2>&1 ||
    { tail -20 "$OUT/log/mmdebstrap-$name.log" >&2; return 1; }
}
build_roots() {
  local t0 pids=()
  t0=$(date +%s)
  if ! stamp_ok root-build "$BUILD_ROOT_KEY"; then
    (mmdebstrap_root build "$ROOT_BUILD" "${BUILD_PACKAGES[@]}" && stamp_set root-build "$BUILD_ROOT_KEY" &&
       timed root-build $(( $(date +%s) - t0 )) && log "trixie build root in $(( $(date +%s) - t0 ))s") & pids+=($!)
  fi
  if ! stamp_ok root-runtime "$RUN_ROOT_KEY"; then
    (mmdebstrap_root runtime "$ROOT_RUN" "${RUNTIME_PACKAGES[@]}" && stamp_set root-runtime "$RUN_ROOT_KEY" &&
       timed root-runtime $(( $(date +%s) - t0 )) && log "trixie runtime root in $(( $(date +%s) - t0 ))s") & pids+=($!)
  fi
  [[ ${#pids[@]} -gt 0 ]] || { log "trixie roots cached"; return 0; }
  local p rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

# --- stage 3: cgo commands and container-disk, inside the build root (own mount namespace: nothing leaks) ----------
CGO_KEY=$(printf '%s\n' "$SRC_ID" "$(go_id)" "$LDFLAGS" "$BUILD_ROOT_KEY" "${CGO_CMDS[@]}" container-disk | sha)
build_cgo() {
  stamp_ok cgo "$CGO_KEY" && { log "cgo commands cached"; return 0; }
  local t0; t0=$(date +%s)
  mkdir -p "$ROOT_BUILD/usr/local/go" "$ROOT_BUILD/src" "$ROOT_BUILD/gocache" "$ROOT_BUILD/out" "$GOCACHE"
  # the same paths as outside (/usr/local/go, -trimpath): pure-Go packages are shared with the host's cache
  unshare -m bash -euo pipefail -c '
    R=$1
    mount --make-rprivate /
    mount --bind /usr/local/go "$R/usr/local/go"; mount --bind "$2" "$R/src"; mount --bind "$3" "$R/gocache"
    mount --bind "$4" "$R/out"; mount -t proc proc "$R/proc"; mount --bind /dev "$R/dev"
    chroot "$R" /usr/bin/env -i PATH=/usr/local/go/bin:/usr/bin:/bin HOME=/root GOCACHE=/gocache \
      GOFLAGS="-mod=vendor -buildvcs=false" GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=1 LDFLAGS="$5" CMDS="$6" \
      bash -euo pipefail -c "
        cd /src
        for c in \$CMDS; do
          t0=\$(date +%s)
          go build -trimpath -ldflags=\"\$LDFLAGS\" -o /out/ ./cmd/\$c
          echo \"go:\$c=\$(( \$(date +%s) - t0 ))s\" >>/out/.cgo-times
        done
        t0=\$(date +%s)
        gcc -static -O2 -o /out/container-disk cmd/container-disk-v2alpha/main.c
        echo \"gcc:container-disk=\$(( \$(date +%s) - t0 ))s\" >>/out/.cgo-times
      "
  ' _ "$ROOT_BUILD" "$SRC" "$GOCACHE" "$BIN" "$LDFLAGS" "${CGO_CMDS[*]}" >>"$OUT/log/cgo.log" 2>&1 ||
    { tail -20 "$OUT/log/cgo.log" >&2; return 1; }
  cat "$BIN/.cgo-times" >>"$TIMES"; rm -f "$BIN/.cgo-times"
  timed cgo-total $(( $(date +%s) - t0 ))
  log "built ${CGO_CMDS[*]} container-disk in the trixie root in $(( $(date +%s) - t0 ))s"
  stamp_set cgo "$CGO_KEY"
}

# stages 1 and 2 in parallel: the Go builds use the CPUs, mmdebstrap mostly the network and the disk
t_par=$(date +%s)
build_static >"$OUT/log/stage-static.out" 2>&1 & p_static=$!
build_roots >"$OUT/log/stage-roots.out" 2>&1 & p_roots=$!
rc=0
wait "$p_static" || rc=1; cat "$OUT/log/stage-static.out"
wait "$p_roots" || rc=1; cat "$OUT/log/stage-roots.out"
[[ $rc -eq 0 ]] || die "build failed (logs in $OUT/log)"
timed static+roots $(( $(date +%s) - t_par ))
build_cgo || die "cgo build failed (log: $OUT/log/cgo.log)"

# --- stage 4: images -----------------------------------------------------------------------------------------------
t_img=$(date +%s)
WORK=$(mktemp -d /var/tmp/hybridorch-kubevirt.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# the node images' base: the runtime root with KubeVirt's node files (BUILD.bazel of cmd/virt-launcher,
# cmd/virt-handler) and the Debian adaptations; imported once per root + files, reused by every TAG
BASE_KEY=$(printf '%s\n' "$RUN_ROOT_KEY" "$(files_hash)" "$SRC_ID" | sha | cut -c1-10)
BASE="$IMAGE_PREFIX/node-base:$KUBEVIRT_VERSION-$BASE_KEY"
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  R="$WORK/base"
  cp -a "$ROOT_RUN" "$R"
  # user and group qemu, uid/gid 107 (the launcher runs as 107; the handler looks qemu up by name)
  if grep -q '^[^:]*:[^:]*:107:' "$R/etc/passwd" "$R/etc/group"; then
    die "uid/gid 107 is taken in the trixie root: $(grep -h '^[^:]*:[^:]*:107:' "$R/etc/passwd" "$R/etc/group" | tr '\n' ' ')"
  fi
  echo "qemu:x:107:107:qemu:/home/qemu:/bin/bash" >>"$R/etc/passwd"
  echo "qemu:x:107:" >>"$R/etc/group"
  echo "qemu:!*:20000::::::" >>"$R/etc/shadow"
  install -d -o 107 -g 107 "$R/home/qemu"
  # virt-handler reaches the launcher's sockets through /proc/PID/root/var/run: the link must be relative
  rm -rf "$R/var/run"; ln -s ../run "$R/var/run"
  install -m 0644 "$SRC/cmd/virt-launcher/qemu.conf" "$SRC/cmd/virt-launcher/virtqemud.conf" "$R/etc/libvirt/"
  # the hook directory too is the launcher's (uid 107): it swaps the script for libvirt-hook-client at start
  install -d -m 0755 -o 107 -g 107 "$R/etc/libvirt/hooks"
  install -m 0755 -o 107 -g 107 "$SRC/cmd/virt-launcher/qemu" "$R/etc/libvirt/hooks/qemu"
  install -m 0644 "$SRC/cmd/virt-launcher/nsswitch.conf" "$R/etc/nsswitch.conf"
  install -d "$R/usr/lib64/qemu-kvm"
  # KubeVirt looks for OVMF in /usr/share/edk2/ovmf under Fedora's names; Debian ships 4 MB builds in /usr/share/OVMF
  install -d "$R/usr/share/edk2/ovmf"
  for pair in OVMF_CODE.fd:OVMF_CODE_4M.fd OVMF_VARS.fd:OVMF_VARS_4M.fd OVMF_CODE.secboot.fd:OVMF_CODE_4M.secboot.fd \
              OVMF_VARS.secboot.fd:OVMF_VARS_4M.ms.fd; do
    [[ -e "$R/usr/share/OVMF/${pair#*:}" ]] && ln -sf "/usr/share/OVMF/${pair#*:}" "$R/usr/share/edk2/ovmf/${pair%%:*}"
  done
  cp -a "$here/rootfs/." "$R/"
  tar -C "$R" --xattrs --xattrs-include='security.capability' -c . |
    docker import --message "hybridorch KubeVirt node base (trixie, inputs $BASE_KEY)" - "$BASE" >/dev/null
  rm -rf "$R"
  timed image:node-base $(( $(date +%s) - t_img ))
  log "imported $BASE"
fi

ver_file() { printf '%s\n' "$KUBEVIRT_VERSION" >"$1/.version"; }
built=()
for n in "${STATIC_IMAGES[@]}" "${NODE_IMAGES[@]}"; do
  ref="$IMAGE_PREFIX/$n:$TAG"
  if docker image inspect "$ref" >/dev/null 2>&1; then built+=("$ref (cached)"); continue; fi
  ctx="$WORK/$n"; mkdir -p "$ctx/rootfs/usr/bin"
  if [[ " ${STATIC_IMAGES[*]} " == *" $n "* ]]; then
    mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/etc"; chmod 1777 "$ctx/rootfs/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:1001:1001::/home/nonroot:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nnonroot:x:1001:\n' >"$ctx/rootfs/etc/group"
    cp "$BIN/$n" "$ctx/rootfs/usr/bin/"; ver_file "$ctx/rootfs"
    # KubeVirt's images run as 1001 (cmd/*/BUILD.bazel); the deployments name the command, found on PATH
    printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/bin:/bin\nUSER 1001\nENTRYPOINT ["/usr/bin/%s"]\n' "$n" >"$ctx/Dockerfile"
  else
    ver_file "$ctx/rootfs"
    if [[ $n == virt-handler ]]; then
      cp "$BIN/virt-handler" "$BIN/virt-chroot" "$ctx/rootfs/usr/bin/"
      printf 'FROM %s\nCOPY rootfs/ /\nENTRYPOINT ["/usr/bin/virt-handler"]\n' "$BASE" >"$ctx/Dockerfile"
    else
      cp "$BIN/virt-launcher" "$BIN/virt-launcher-monitor" "$BIN/virt-freezer" "$BIN/virt-probe" "$BIN/virt-tail" \
         "$BIN/libvirt-hook-client" "$BIN/container-disk" "$SRC/cmd/virt-launcher/node-labeller/node-labeller.sh" \
         "$ctx/rootfs/usr/bin/"
      # a tar keeps the file capability (COPY may not): the monitor lets the non-root launcher bind low ports
      setcap cap_net_bind_service=+ep "$ctx/rootfs/usr/bin/virt-launcher-monitor"
      tar -C "$ctx/rootfs" --xattrs --xattrs-include='security.capability' --owner=0 --group=0 -cf "$ctx/files.tar" .
      rm -rf "$ctx/rootfs"
      printf 'FROM %s\nADD files.tar /\nUSER 107\nENTRYPOINT ["/usr/bin/virt-launcher"]\n' "$BASE" >"$ctx/Dockerfile"
    fi
  fi
  # (the classic builder's deprecation notice goes to stderr: shown only when the build fails)
  docker build -q --label "hybridorch.kubevirt.inputs=$TAG" -t "$ref" "$ctx" >/dev/null 2>"$WORK/docker-build.err" ||
    { cat "$WORK/docker-build.err" >&2; die "docker build of $ref failed"; }
  built+=("$ref")
done
timed images $(( $(date +%s) - t_img ))
# older builds' images (other tags) go: each holds a few hundred MB; smoke-disk images are smoke-vmi.sh's
stale=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep "^$IMAGE_PREFIX/" | grep -v "^$IMAGE_PREFIX/smoke-disk:" |
  grep -v -e ":$TAG\$" -e "^$BASE\$" || true)
# shellcheck disable=SC2086
[[ -z "$stale" ]] || { docker rmi $stale >/dev/null 2>&1 || true; log "removed $(echo "$stale" | wc -l) older image(s)"; }

cat >"$OUT/build.env" <<EOF
KUBEVIRT_VERSION=$KUBEVIRT_VERSION
KUBEVIRT_SRC=$SRC
KUBEVIRT_IMAGE_PREFIX=$IMAGE_PREFIX
KUBEVIRT_IMAGE_TAG=$TAG
KUBEVIRT_BIN=$BIN
KUBEVIRT_IMAGES="$(for n in "${STATIC_IMAGES[@]}" "${NODE_IMAGES[@]}"; do printf '%s ' "$IMAGE_PREFIX/$n:$TAG"; done)"
EOF
end=$(date +%s)
timed total $(( end - start ))
[[ $T_EXTRACT -gt 0 ]] && timed extract "$T_EXTRACT"
cp "$TIMES" "$OUT/build-time.txt"
log "images (tag $TAG):"
for r in "${built[@]}"; do
  ref="${r% (cached)}"
  printf '  %s  %s%s\n' "$ref" "$(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.0f MB", $1/1e6}')" \
    "$([[ "$r" == *"(cached)" ]] && echo " (cached)")"
done
log "done in $(( end - start ))s: $(tr '\n' ' ' <"$TIMES")"
