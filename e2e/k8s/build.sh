#!/usr/bin/env bash
# Builds the real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl), etcd and kwok/kwokctl from the Go module proxy into ~/.cache/hybridorch/k8s/VERSION/bin.
# Idempotent: a finished build (marked by .complete) is reused. Usage: e2e/k8s/build.sh [--print-dir]
set -euo pipefail

K8S_VERSION="${HYBRIDORCH_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${HYBRIDORCH_ETCD_VERSION:-v3.6.4}"
KWOK_VERSION="${HYBRIDORCH_KWOK_VERSION:-v0.7.0}"
CACHE="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/k8s/$K8S_VERSION"
BIN="$CACHE/bin"
export PATH="/usr/local/go/bin:$PATH"
# Kubernetes' staging modules are published as v0.MINOR.PATCH alongside v1.MINOR.PATCH.
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

if [[ "${1:-}" == "--print-dir" ]]; then echo "$BIN"; exit 0; fi
# What a finished build holds; a cache made by an older recipe (another stamp) is rebuilt in place.
STAMP="static: kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kubeadm kube-proxy etcd"
if [[ -f "$CACHE/.complete" && "$(cat "$CACHE/.complete")" == "$STAMP" ]]; then echo "k8s binaries cached in $BIN"; exit 0; fi
command -v go >/dev/null || { echo "error: Go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }

mkdir -p "$BIN" "$CACHE/log"
LOG="$CACHE/log/build.log"
start=$(date +%s)
WRAP="$CACHE/wrapper"
rm -rf "$WRAP"; mkdir -p "$WRAP"
cd "$WRAP"

go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > k8s.json
K8S_GOMOD=$(python3 -c 'import json,sys; print(json.load(open("k8s.json"))["GoMod"])')

# The published k8s.io/kubernetes go.mod replaces every staging module with ./staging/...; a module
# that depends on it must map each of those to the published version instead (generated, not hand-kept).
{
  echo "module hybridorch.dev/k8sbuild"
  echo
  echo "go 1.24.0"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $K8S_VERSION"
  echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  echo ")"
  echo
  echo "replace ("
  sed -n '/^replace (/,/^)/p' "$K8S_GOMOD" | awk -v v="$STAGING_VERSION" '$2=="=>" && $3 ~ /^\.\/staging\// {printf "\t%s => %s %s\n", $1, $1, v}'
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

// Package tools pins the commands this module builds.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
echo "[build] resolving modules ($(grep -c '=>' go.mod) staging replaces)"
go mod tidy >>"$LOG" 2>&1 || { tail -20 "$LOG" >&2; exit 1; }

echo "[build] compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kubeadm, kube-proxy, etcd (long)"
# Static binaries (as the Kubernetes releases are): the kind node image runs them in FROM-scratch images.
export CGO_ENABLED=0
# One go build for all commands so the shared packages compile once.
# Version stamps, as the Kubernetes release scripts set them (hack/lib/version.sh): without them the
# binaries report v0.0.0 and clients (kwokctl, kubectl) pick flags for the wrong version.
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
stamp=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  stamp+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  stamp+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
go build -trimpath -ldflags="-s -w$stamp" -o "$BIN/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kube-proxy go.etcd.io/etcd/server/v3 >>"$LOG" 2>&1 \
  || { tail -20 "$LOG" >&2; exit 1; }
# go names a binary after the last path element that is not a major-version suffix: "server"
mv "$BIN/server" "$BIN/etcd"
mid=$(date +%s)
echo "[build] kwok $KWOK_VERSION"
GOBIN="$BIN" go install -trimpath -ldflags='-s -w' "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" >>"$LOG" 2>&1 \
  || { tail -20 "$LOG" >&2; exit 1; }
end=$(date +%s)
echo "k8s=$((mid-start))s kwok=$((end-mid))s total=$((end-start))s" > "$CACHE/build-time.txt"
echo "$STAMP" > "$CACHE/.complete"
echo "[build] done in $((end-start))s ($(cat "$CACHE/build-time.txt")); binaries in $BIN"
