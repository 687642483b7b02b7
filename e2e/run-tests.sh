#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, then run every test, end-to-end included.
# HYBRIDORCH_E2E=1 makes missing infrastructure a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash e2e/setup.sh
python3 -m pip install -q --disable-pip-version-check ".[test]"
echo "setup took $(( $(date +%s) - start ))s"
export HYBRIDORCH_E2E=1
exec python3 -m pytest -p no:cacheprovider "$@"
