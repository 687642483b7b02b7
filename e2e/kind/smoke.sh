#!/usr/bin/env bash
# Prove that pods really run on the kind cluster of cluster.sh: a FROM-scratch busybox-static httpd image
# built here, loaded with `kind load docker-image`, a Deployment that becomes Ready (a real readiness
# probe), and a page fetched by a client pod through the Service's cluster DNS name.
# Usage: e2e/kind/smoke.sh   (after e2e/kind/cluster.sh up; cleans up its namespace)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CACHE="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}"
NAME="${HYBRIDORCH_KIND_CLUSTER:-hybridorch-e2e}"
KUBECONFIG_FILE="${HYBRIDORCH_KIND_KUBECONFIG:-$CACHE/kind/kubeconfig}"
k() { "$CACHE/bin/kubectl-kind" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
IMAGE=hybridorch.local/kind-smoke:1
NS=kind-smoke
busybox=$(command -v busybox || true)
[[ -n "$busybox" ]] && file -L "$busybox" | grep -q "statically linked" || { echo "error: needs busybox-static" >&2; exit 1; }

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
cp "$busybox" "$ctx/busybox"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /www && mkdir -m 1777 /tmp && echo 'hello from a kind pod' > /www/index.html"]
ENV PATH=/bin
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" >/dev/null
t0=$(date +%s%N)
"$CACHE/bin/kind" load docker-image "$IMAGE" --name "$NAME" >&2
t_load=$(( ($(date +%s%N) - t0) / 1000000 ))

k delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
k create namespace "$NS" >/dev/null
k apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: hybridorch.local/kind-smoke:1
          imagePullPolicy: Never
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML
t1=$(date +%s%N)
k -n "$NS" rollout status deployment/web --timeout=120s >&2
t_ready=$(( ($(date +%s%N) - t1) / 1000000 ))
# busybox-static's wget segfaults in a FROM-scratch image (glibc's NSS is missing): the name is looked up
# with busybox's own resolver (cluster DNS) and the page fetched from the Service's address with nc
k -n "$NS" run client --image="$IMAGE" --image-pull-policy=Never --restart=Never --command -- sh -c \
  "ip=\$(nslookup web.$NS.svc.cluster.local | awk '/^Address/ {a=\$2} END {print a}'); printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 \$ip 80 | tail -n 1" >/dev/null
k -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/client --timeout=60s >&2
page=$(k -n "$NS" logs client)
echo "page: $page"
[[ "$page" == "hello from a kind pod" ]] || { echo "error: unexpected page" >&2; exit 1; }
k delete namespace "$NS" --wait=false >/dev/null
echo "smoke ok: kind load ${t_load} ms, Deployment Ready ${t_ready} ms, page fetched through the Service"
