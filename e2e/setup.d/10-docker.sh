#!/usr/bin/env bash
# Make sure a Docker engine answers: start Debian's dockerd in the background when none is running.
# Idempotent; the daemon's log goes to ~/.cache/hybridorch/dockerd.log.
set -euo pipefail
cache="${HOME}/.cache/hybridorch"
mkdir -p "$cache"
log="$cache/dockerd.log"

if docker info >/dev/null 2>&1; then
  echo "docker: engine already running"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker: dockerd not installed (apt-get install docker.io)" >&2
  exit 1
fi
# systemd hosts start it the normal way; containers/CI runners without an init start it by hand
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  systemctl start docker || true
fi
if ! docker info >/dev/null 2>&1; then
  # containerd is started by dockerd itself when no system containerd socket exists
  echo "docker: starting dockerd (log: $log)"
  # setsid: the daemon must outlive this script and the CI step that ran it
  setsid nohup dockerd >>"$log" 2>&1 </dev/null &
  echo $! >"$cache/dockerd.pid"
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker: engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    exit 0
  fi
  sleep 0.5
done
echo "docker: dockerd did not answer within 30 s; last log lines:" >&2
tail -n 20 "$log" >&2 || true
exit 1
