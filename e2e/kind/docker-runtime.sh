#!/usr/bin/env bash
# Register the runc wrapper (e2e/kind/runc-wrapper) with the local Docker engine as runtime
# "hybridorch-runc" (merged into /etc/docker/daemon.json, applied with SIGHUP: no daemon restart), so that
# kind's privileged node containers can start on hosts whose root lacks CAP_SYS_RESOURCE. The engine's
# default runtime is left alone; e2e/kind/cluster.sh asks for this runtime only for kind's nodes.
# Idempotent. Usage: e2e/kind/docker-runtime.sh WRAPPER_BINARY
set -euo pipefail
wrapper=$1
config=/etc/docker/daemon.json
name=hybridorch-runc
if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q "\"$name\""; then
  exit 0
fi
mkdir -p /etc/docker
changed=$(python3 - "$config" "$name" "$wrapper" <<'PY'
import json, os, sys
path, name, wrapper = sys.argv[1:]
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
want = {"path": wrapper}
if conf.get("runtimes", {}).get(name) != want:
    conf.setdefault("runtimes", {})[name] = want
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f, indent=2)
    os.replace(path + ".tmp", path)
    print("yes")
PY
)
pid=$(pidof dockerd || true)
[[ -n "$pid" ]] || { echo "error: dockerd is not running (e2e/setup.d/10-docker.sh starts it)" >&2; exit 1; }
# dockerd re-reads daemon.json on SIGHUP; "runtimes" is one of the settings it applies live
kill -HUP $pid
for _ in $(seq 1 50); do
  docker info --format '{{json .Runtimes}}' | grep -q "\"$name\"" && { echo "docker: runtime $name registered (${changed:-config already had it})"; exit 0; }
  sleep 0.2
done
echo "error: dockerd did not pick up runtime $name from $config" >&2
exit 1
