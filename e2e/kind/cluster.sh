#!/usr/bin/env bash
# A real kind cluster made with no registry: the node image from build-node-image.sh, kind from the Go
# module proxy (build-tools.sh), created with `kind create cluster` and cluster.yaml.
#   e2e/kind/cluster.sh prepare                 build/cache kind and the node image, register the runtime
#   e2e/kind/cluster.sh up [--kubeconfig F]     create (or reuse) the cluster, wait for the node and coredns
#   e2e/kind/cluster.sh down | kubeconfig | image
# Environment: HYBRIDORCH_KIND_CLUSTER (default hybridorch-e2e), HYBRIDORCH_KIND_KUBECONFIG.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.sh"
CACHE="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}"
NAME="${HYBRIDORCH_KIND_CLUSTER:-hybridorch-e2e}"
KUBECONFIG_FILE="${HYBRIDORCH_KIND_KUBECONFIG:-$CACHE/kind/kubeconfig}"
BIN="$CACHE/bin"
log() { echo "[kind] $*" >&2; }

cmd="${1:-}"; shift || true
while (($#)); do
  case "$1" in
    --kubeconfig) KUBECONFIG_FILE=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    *) echo "usage: $0 prepare|up|down|kubeconfig|image [--kubeconfig FILE] [--name NAME]" >&2; exit 2 ;;
  esac
done

prepare() {
  bash "$here/build-tools.sh"
  local tools; tools=$(bash "$here/build-tools.sh" --print-dir)
  mkdir -p "$BIN"
  # copies, not links: the tools directory is replaced when its inputs change
  install -m 0755 "$tools/kind" "$BIN/kind"
  install -m 0755 "$tools/runc-wrapper" "$BIN/runc-wrapper"
  bash "$here/docker-runtime.sh" "$BIN/runc-wrapper"
  bash "$here/build-node-image.sh"
}

# kind runs `docker run` for its nodes and has no runtime option: a `docker` first on kind's PATH adds
# --runtime=hybridorch-runc when a privileged container cannot start with the engine's default runtime.
docker_shim_path() {
  local image=$1 shim="$CACHE/kind/docker-shim"
  if docker run --rm --privileged --entrypoint /bin/true "$image" >/dev/null 2>&1; then
    echo "$PATH"; return
  fi
  mkdir -p "$shim"
  cat >"$shim/docker" <<SHIM
#!/bin/sh
# written by e2e/kind/cluster.sh: kind's node containers run with the runc wrapper
if [ "\$1" = run ]; then shift; exec $(command -v docker) run --runtime=hybridorch-runc "\$@"; fi
exec $(command -v docker) "\$@"
SHIM
  chmod +x "$shim/docker"
  log "privileged containers fail with the default runtime here; kind's nodes use hybridorch-runc"
  echo "$shim:$PATH"
}

kubectl_() { "$BIN/kubectl-kind" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

up() {
  prepare >&2
  local image; image=$(bash "$here/build-node-image.sh" --print-image)
  ln -sf "$(bash "$here/../k8s/build.sh" --print-dir)/kubectl" "$BIN/kubectl-kind"
  mkdir -p "$(dirname "$KUBECONFIG_FILE")"
  local start; start=$(date +%s)
  if "$BIN/kind" get clusters 2>/dev/null | grep -qx "$NAME"; then
    log "cluster $NAME exists; exporting its kubeconfig"
    "$BIN/kind" export kubeconfig --name "$NAME" --kubeconfig "$KUBECONFIG_FILE" >&2
  else
    log "creating cluster $NAME from $image"
    PATH="$(docker_shim_path "$image")" "$BIN/kind" create cluster --name "$NAME" --image "$image" \
      --config "$here/cluster.yaml" --kubeconfig "$KUBECONFIG_FILE" --wait 180s >&2
  fi
  kubectl_ wait --for=condition=Ready node --all --timeout=180s >&2
  kubectl_ -n kube-system rollout status deployment/coredns --timeout=180s >&2
  # NetworkPolicies are enforced from here on (node/kind/manifests/default-cni.yaml)
  local running; running=$(docker inspect -f '{{.Config.Image}}' "$NAME-control-plane" 2>/dev/null || true)
  if [[ "$running" == "$image" ]]; then
    kubectl_ -n kube-system rollout status daemonset/kube-router --timeout=180s >&2
  else
    log "warning: cluster $NAME runs ${running:-?}, not $image (older inputs): \`$0 down\` to recreate it"
  fi
  local created; created=$(date +%s)
  log "cluster $NAME ready in $((created - start))s; KUBECONFIG=$KUBECONFIG_FILE"
  echo "$((created - start))" >"$CACHE/kind/create-time.txt"
}

down() {
  if [[ -x "$BIN/kind" ]] && "$BIN/kind" get clusters 2>/dev/null | grep -qx "$NAME"; then
    "$BIN/kind" delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG_FILE" >&2
  fi
  rm -f "$KUBECONFIG_FILE"
}

case "$cmd" in
  prepare) prepare ;;
  up) up ;;
  down) down ;;
  kubeconfig) echo "$KUBECONFIG_FILE" ;;
  image) bash "$here/build-node-image.sh" --print-image ;;
  *) echo "usage: $0 prepare|up|down|kubeconfig|image [--kubeconfig FILE] [--name NAME]" >&2; exit 2 ;;
esac
