#!/usr/bin/env bash
# kind from the Go module proxy and the kind node image built locally (no registry): e2e/kind/.
# Idempotent: the tools and the node image are cached under ~/.cache/hybridorch (kind/, bin/).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$here/kind/cluster.sh" prepare
