#!/usr/bin/env bash
# KubeVirt built from source offline into local images (e2e/kubevirt/build.sh): the e2e tests install it on their
# KubeVirt kind cluster. The source comes from HYBRIDORCH_KUBEVIRT_SOURCE (the team's tarball, which .ci/run
# names), the cache, or a clone of the pinned tag. Idempotent: cached under ~/.cache/hybridorch/kubevirt.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$here/kubevirt/build.sh"
