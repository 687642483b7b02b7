#!/usr/bin/env bash
# Install the KubeVirt that e2e/kubevirt/build.sh built on a kind cluster of the e2e suite, with no registry:
# load its images into the nodes, render KubeVirt's operator manifests for them (tools/manifest-templator,
# imagePullPolicy Never), apply the operator and a KubeVirt CR that selects TCG (useEmulation), wait for Available.
# Usage: e2e/kubevirt/install.sh KUBECONFIG
# Environment: HYBRIDORCH_KIND_CLUSTER (default hybridorch-e2e), HYBRIDORCH_KUBEVIRT_TIMEOUT (seconds, default 900).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[[ $# -eq 1 && -f "$1" ]] || { echo "usage: $0 KUBECONFIG" >&2; exit 2; }
export KUBECONFIG="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
CLUSTER="${HYBRIDORCH_KIND_CLUSTER:-hybridorch-e2e}"
TIMEOUT="${HYBRIDORCH_KUBEVIRT_TIMEOUT:-900}"
NS=kubevirt
log() { echo "[kubevirt-install] $*"; }
die() { echo "kubevirt-install: $*" >&2; exit 1; }

OUT=$(bash "$here/build.sh" --print-dir)
[[ -f "$OUT/build.env" ]] || die "nothing built yet: run e2e/kubevirt/build.sh"
# shellcheck disable=SC1091
. "$OUT/build.env"
[[ "$(bash "$here/build.sh" --print-tag)" == "$KUBEVIRT_IMAGE_TAG" ]] ||
  die "the last build ($KUBEVIRT_IMAGE_TAG) is not of the current inputs: run e2e/kubevirt/build.sh"
KUBECTL=$(command -v kubectl || true)
K8S_KUBECTL="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/k8s/v1.34.4/bin/kubectl"
[[ -x "$K8S_KUBECTL" ]] && KUBECTL="$K8S_KUBECTL"
[[ -n "$KUBECTL" ]] || die "kubectl not found"
k() { "$KUBECTL" "$@"; }
TIMES=()
start=$(date +%s)

# 1. images into every node (hybridorch's loader skips nodes that already hold the same image ID)
t0=$(date +%s)
# shellcheck disable=SC2086
python3 - "$CLUSTER" $KUBEVIRT_IMAGES <<'PY'
import sys
from hybridorch.backends.kind import load_images
for line in load_images(sys.argv[1], sys.argv[2:], lambda event: None):
    print("  " + line)
PY
TIMES+=("load=$(( $(date +%s) - t0 ))s")

# 2. the operator manifests, rendered as KubeVirt's hack/build-manifests.sh does (two passes), for the local images
t0=$(date +%s)
WORK=$(mktemp -d /tmp/hybridorch-kubevirt-install.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
T="$KUBEVIRT_BIN/manifest-templator"
(cd "$KUBEVIRT_SRC" &&
 "$T" --process-files --generated-manifests-dir=manifests/generated/ \
   --input-file=manifests/release/kubevirt-operator.yaml.in >"$WORK/operator.yaml.in" &&
 "$T" --process-vars --namespace="$NS" --cdi-namespace=cdi --csv-namespace=placeholder \
   --container-prefix="$KUBEVIRT_IMAGE_PREFIX" --container-tag="$KUBEVIRT_IMAGE_TAG" --image-pull-policy=Never \
   --csv-version="${KUBEVIRT_VERSION#v}" --kubevirt-logo-path=assets/kubevirt_logo.png --verbosity=2 \
   --input-file="$WORK/operator.yaml.in" >"$WORK/kubevirt-operator.yaml") ||
  die "manifest-templator failed"
grep -q "image: $KUBEVIRT_IMAGE_PREFIX/virt-operator:$KUBEVIRT_IMAGE_TAG" "$WORK/kubevirt-operator.yaml" ||
  die "the rendered operator does not run $KUBEVIRT_IMAGE_PREFIX/virt-operator:$KUBEVIRT_IMAGE_TAG"

# 3. the stub CRDs the e2e cluster installs for schema checks (e2e/k8s/kubevirt_crds.py) break a real install:
#    the operator loops on "already exists", and the CDI stub makes virt-controller wait for CDI
#    (read into a variable first: `kubectl ... | grep -q` under pipefail fails when grep exits before kubectl)
stubs=$(k get crd -l app.kubernetes.io/part-of=kubevirt-crds-from-schema -o name)
if [[ -n "$stubs" ]]; then
  log "deleting the schema-only stub CRDs: $(echo "$stubs" | tr '\n' ' ')"
  k delete crd -l app.kubernetes.io/part-of=kubevirt-crds-from-schema --wait=true >/dev/null
fi

# 4. the operator (server-side: the KubeVirt CRD is too large for the last-applied annotation)
k apply --server-side --force-conflicts -f "$WORK/kubevirt-operator.yaml" >/dev/null
k -n "$NS" rollout status deployment/virt-operator --timeout="${TIMEOUT}s" >/dev/null ||
  { k -n "$NS" get pods -o wide; die "virt-operator did not become ready"; }
TIMES+=("operator=$(( $(date +%s) - t0 ))s")
log "virt-operator ready"

# 5. the KubeVirt CR: TCG (no usable /dev/kvm here), local images only, one replica of each control-plane part
#    (a 2-CPU node); ImageVolume (on by default) needs Kubernetes image volumes, which containerd 1.6 lacks;
#    Template (on by default) deploys virt-template, whose images come from another project
t0=$(date +%s)
k apply --server-side --force-conflicts -f - >/dev/null <<EOF
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata:
  name: kubevirt
  namespace: $NS
spec:
  imagePullPolicy: Never
  certificateRotateStrategy: {}
  customizeComponents: {}
  workloadUpdateStrategy: {}
  infra:
    replicas: 1
  configuration:
    imagePullPolicy: Never
    developerConfiguration:
      useEmulation: true
      disabledFeatureGates:
        - ImageVolume
        - Template
EOF
if ! k -n "$NS" wait kv/kubevirt --for=condition=Available --timeout="${TIMEOUT}s" >/dev/null; then
  k -n "$NS" get kv kubevirt -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' || true
  k -n "$NS" get pods -o wide || true
  k -n "$NS" logs deployment/virt-operator --tail=30 2>/dev/null || true
  die "KubeVirt did not become Available in ${TIMEOUT}s"
fi
TIMES+=("cr-to-available=$(( $(date +%s) - t0 ))s")
end=$(date +%s)
log "KubeVirt $KUBEVIRT_VERSION ($KUBEVIRT_IMAGE_TAG) Available on kind cluster $CLUSTER in $((end - start))s: ${TIMES[*]}"
k -n "$NS" get pods -o wide
