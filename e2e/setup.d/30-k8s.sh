#!/usr/bin/env bash
# Build (once; cached under ~/.cache/hybridorch/k8s/VERSION/) the Kubernetes control plane, etcd and kwok
# that e2e/cluster.sh runs. Idempotent: a cached build returns at once.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/k8s/build.sh"
