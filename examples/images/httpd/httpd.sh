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
exec /bin/busybox httpd "$@"
