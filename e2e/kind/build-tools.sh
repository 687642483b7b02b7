#!/usr/bin/env bash
# Build (once, cached under ~/.cache/hybridorch/kind/tools/STAMP/bin) the Go programs of the kind setup,
# static, from the Go module proxy: kind, crictl, coredns, kube-router (its firewall enforces NetworkPolicies), and our own pause and
# runc wrapper from e2e/kind/. Idempotent. Usage: e2e/kind/build-tools.sh [--print-dir]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.sh"
export PATH="/usr/local/go/bin:$PATH" CGO_ENABLED=0
src_hash=$(cat "$here/versions.sh" "$here/build-tools.sh" "$here"/pause/* "$here"/runc-wrapper/* | sha256sum | cut -c1-12)
CACHE="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/kind/tools/$src_hash"
BIN="$CACHE/bin"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$BIN"; exit 0; fi
if [[ -f "$CACHE/.complete" ]]; then echo "kind tools cached in $BIN"; exit 0; fi
command -v go >/dev/null || { echo "error: Go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }
mkdir -p "$BIN"
LOG="$CACHE/build.log"
start=$(date +%s)
step() {  # name, command...: run, log, time
  local name=$1 t0; shift; t0=$(date +%s)
  if ! "$@" >>"$LOG" 2>&1; then echo "[kind-tools] $name failed; last lines of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; fi
  echo "[kind-tools] $name $(( $(date +%s) - t0 ))s"
}
flags=(-trimpath "-ldflags=-s -w")
step "kind $KIND_VERSION" env GOBIN="$BIN" go install "${flags[@]}" "sigs.k8s.io/kind@$KIND_VERSION"
step "crictl $CRI_TOOLS_VERSION" env GOBIN="$BIN" go install "${flags[@]}" "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
step "coredns $COREDNS_VERSION" env GOBIN="$BIN" go install "${flags[@]}" "github.com/coredns/coredns@$COREDNS_VERSION"
step "kube-router $KUBE_ROUTER_VERSION" env GOBIN="$BIN" go install "${flags[@]}" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
step "pause" go -C "$here/pause" build "${flags[@]}" -o "$BIN/pause" .
step "runc-wrapper" go -C "$here/runc-wrapper" build "${flags[@]}" -o "$BIN/runc-wrapper" .
touch "$CACHE/.complete"
echo "[kind-tools] done in $(( $(date +%s) - start ))s; binaries in $BIN"
