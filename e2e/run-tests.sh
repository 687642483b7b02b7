#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, then run every test, end-to-end included.
# HYBRIDORCH_E2E=1 makes missing infrastructure a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# the package first: the setup steps run parts of it (python3 -m hybridorch.vm.guest fetch)
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore ".[test]"
bash e2e/setup.sh
echo "setup took $(( $(date +%s) - start ))s"
export HYBRIDORCH_E2E=1
exec python3 -m pytest -p no:cacheprovider "$@"
