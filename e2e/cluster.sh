#!/usr/bin/env bash
# Start or stop the Kubernetes cluster of the e2e tests and print where its kubeconfig is.
#   e2e/cluster.sh up [--provider auto|local|kind]   start (or reuse) it; builds the binaries once if needed
#   e2e/cluster.sh down | stop | start | status | kubeconfig
# then: export KUBECONFIG="$(e2e/cluster.sh kubeconfig)"
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/k8s/cluster.py" "$@"
