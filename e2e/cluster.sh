#!/usr/bin/env bash
# Start or stop a Kubernetes cluster of the e2e tests and print where its kubeconfig is.
#   e2e/cluster.sh up [--provider auto|kind|local]   start (or reuse) it; builds what it needs once
#     kind:  a real kind cluster from a node image built here, no registry (e2e/kind/); the suite's default
#     local: kwok's fake nodes over a real API server (e2e/k8s/), for the fake-node tests
#     auto:  the one that runs (kind first), else kind when kind and its node image are built, else local
#   e2e/cluster.sh down | stop | start | status | kubeconfig   [--provider ...]   (stop/start: local only)
# then: export KUBECONFIG="$(e2e/cluster.sh kubeconfig)"
# Environment: HYBRIDORCH_KIND_CLUSTER (kind cluster name, default hybridorch-e2e), HYBRIDORCH_KIND_KUBECONFIG.
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/k8s/cluster.py" "$@"
