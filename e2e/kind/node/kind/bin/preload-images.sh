#!/bin/bash
# Import the images kubeadm runs (built FROM scratch by e2e/kind/build-node-image.sh) into containerd,
# once per node (/var is the node's own volume).
set -euo pipefail
for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
start=$(date +%s%N)
ctr --namespace=k8s.io images import --snapshotter=overlayfs /kind/images/preload.tar
touch /var/lib/hybridorch-preloaded
echo "preloaded $(ctr --namespace=k8s.io images ls -q | grep -c .) images in $(( ($(date +%s%N) - start) / 1000000 )) ms"
