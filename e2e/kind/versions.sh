# Versions of everything the kind node image is made of (sourced by the e2e/kind scripts). Changing one
# changes the image's input hash, so the next build makes a new image.
KIND_VERSION="${HYBRIDORCH_KIND_VERSION:-v0.33.0}"
K8S_VERSION="${HYBRIDORCH_K8S_VERSION:-v1.34.4}"
CRI_TOOLS_VERSION="v1.34.0"
COREDNS_VERSION="v1.12.1"          # what kubeadm v1.34 deploys (kubeadm config images list)
# NetworkPolicy enforcement: kube-router's firewall alone (iptables + ipset). kube-network-policies queues
# packets through nftables `queue`, which these kernels lack (CONFIG_NFT_QUEUE unset). v2.1.0 is the only
# version the Go module proxy serves and is flagged with reported security flaws: acceptable for a
# throwaway offline test cluster only.
KUBE_ROUTER_VERSION="v2.1.0"       # github.com/cloudnativelabs/kube-router/v2
PAUSE_TAG="3.10.1"                 # the sandbox image tag kubeadm v1.34 expects
ETCD_TAG="3.6.4-0"                 # etcd v3.6.4 from e2e/k8s/build.sh (cluster.yaml sets kubeadm's etcd imageTag)
DEBIAN_SUITE="bookworm"
NODE_REPO="hybridorch.local/kind-node"
