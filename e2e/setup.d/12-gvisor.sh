#!/usr/bin/env bash
# gVisor: build runsc and containerd-shim-runsc-v1 (static, from the Go module proxy, cached under
# ~/.cache/hybridorch/gvisor/VERSION/bin), check that a sandbox really boots on this host, and register runsc
# with the local Docker engine as runtime "runsc" (merged into /etc/docker/daemon.json, applied with SIGHUP).
# hybridorch's Docker backend then runs `sandboxed` placements under gVisor.
#
# Static matters: runsc re-executes itself (/proc/self/exe) after pivoting into an empty root, where a
# dynamically linked build (go install's default with cgo) finds no ELF interpreter, so execve fails with
# "error executing umounter: fork/exec /proc/self/exe: no such file or directory".
#
# A host where the sandbox does not boot gets no registration (the reason is printed; hybridorch then runs
# sandboxed workloads in their own VM). Idempotent.
# Usage: e2e/setup.d/12-gvisor.sh [--print-dir]   (--print-dir: where the binaries are, for the kind node image)
set -euo pipefail
# gvisor.dev/gvisor is served only as a pseudo-version (its "go" branch); pinned here, in one place
GVISOR_VERSION="${HYBRIDORCH_GVISOR_VERSION:-v0.0.0-20260905035102-160fafc42237}"
CACHE="${HYBRIDORCH_CACHE:-$HOME/.cache/hybridorch}/gvisor/$GVISOR_VERSION"
BIN="$CACHE/bin"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$BIN"; exit 0; fi
export PATH="/usr/local/go/bin:$PATH"

if [[ ! -f "$CACHE/.complete" ]]; then
  command -v go >/dev/null || { echo "gvisor: Go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }
  mkdir -p "$BIN"
  start=$(date +%s)
  echo "gvisor: building runsc and containerd-shim-runsc-v1 $GVISOR_VERSION (log: $CACHE/build.log)"
  if ! env CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath "-ldflags=-s -w" \
      "gvisor.dev/gvisor/runsc@$GVISOR_VERSION" "gvisor.dev/gvisor/shim@$GVISOR_VERSION" >"$CACHE/build.log" 2>&1; then
    echo "gvisor: build failed; last lines of $CACHE/build.log:" >&2; tail -20 "$CACHE/build.log" >&2; exit 1
  fi
  mv "$BIN/shim" "$BIN/containerd-shim-runsc-v1"   # the name containerd derives from io.containerd.runsc.v1
  touch "$CACHE/.complete"
  echo "gvisor: built in $(( $(date +%s) - start ))s"
fi
runsc="$BIN/runsc"

# does a sandbox boot here? (the host's root as the sandbox's root, no network: under a second)
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
if ! out=$(cd "$probe_dir" && timeout 60 "$runsc" --root="$probe_dir/state" --network=none do cat /proc/version 2>&1) \
    || [[ "$out" != *gvisor* ]]; then
  echo "gvisor: a runsc sandbox does not boot on this host, runtime not registered with Docker:" >&2
  echo "$out" | tail -5 >&2
  exit 0
fi
echo "gvisor: sandbox boots ($(echo "$out" | head -1))"

config=/etc/docker/daemon.json
want="{\"path\":\"$runsc\"}"
if docker info --format '{{json .Runtimes.runsc}}' 2>/dev/null | grep -qF "$want"; then
  echo "gvisor: Docker runtime runsc already registered ($runsc)"
  exit 0
fi
mkdir -p /etc/docker
python3 - "$config" "$runsc" <<'PY'
import json, os, sys
path, runsc = sys.argv[1:]
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
conf.setdefault("runtimes", {})["runsc"] = {"path": runsc}
with open(path + ".tmp", "w") as f:
    json.dump(conf, f, indent=2)
os.replace(path + ".tmp", path)
PY
pid=$(pidof dockerd || true)
[[ -n "$pid" ]] || { echo "gvisor: dockerd is not running (e2e/setup.d/10-docker.sh starts it)" >&2; exit 1; }
kill -HUP $pid   # dockerd re-reads daemon.json on SIGHUP and applies "runtimes" live
for _ in $(seq 1 50); do
  if docker info --format '{{json .Runtimes.runsc}}' | grep -qF "$want"; then
    echo "gvisor: Docker runtime runsc registered ($runsc)"; exit 0
  fi
  sleep 0.2
done
echo "gvisor: dockerd did not pick up runtime runsc from $config" >&2
exit 1
