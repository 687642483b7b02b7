#!/bin/sh
# Write /www/index.html naming this workload, then become busybox httpd with the given arguments.
# /www points into /tmp so the page can be written under a read-only root filesystem (tmpfs /tmp).
set -e
mkdir -p /tmp/www
cat > /tmp/www/index.html <<HTML
<!doctype html>
<title>${PAGE_TITLE}</title>
<h1>${PAGE_TITLE}</h1>
<p>workload ${HYBRIDORCH_WORKLOAD:-unknown} replica ${HYBRIDORCH_REPLICA:-0} on ${HOSTNAME:-unknown}</p>
HTML
# As PID 1, busybox httpd would ignore SIGTERM (no handler of its own), so every stop would wait out the whole
# grace period and end in SIGKILL: this shell stays PID 1 and passes the signal on.
/bin/busybox httpd "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child" || true; exit 0' TERM INT
wait "$child"
