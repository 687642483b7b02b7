#!/usr/bin/env bash
# The linters e2e/test_linters.py runs on the rendered examples. Idempotent; cached under ~/.cache/hybridorch:
# - kube-score: `go install` from the Go module proxy into ~/.cache/hybridorch/bin (a stamp records the version);
# - checkov (PyPI) in its own venv, ~/.cache/hybridorch/venvs/checkov: its pins (packaging<24, boto3, networkx 2)
#   would downgrade packages the test environment uses, so it is not in setup.cfg's `test` extra.
# kube-linter is not installed: the Go module proxy refuses it (403 for golang.stackrox.io/kube-linter).
set -euo pipefail
KUBE_SCORE_VERSION=v1.20.0
CHECKOV_VERSION=3.3.30
cache="${HOME}/.cache/hybridorch"
bin="$cache/bin"
venv="$cache/venvs/checkov"
export PATH="/usr/local/go/bin:$PATH"
mkdir -p "$bin"

stamp="$bin/.kube-score.version"
if [[ -x "$bin/kube-score" && "$(cat "$stamp" 2>/dev/null)" == "$KUBE_SCORE_VERSION" ]]; then
  echo "linters: kube-score $KUBE_SCORE_VERSION cached"
else
  command -v go >/dev/null || { echo "linters: Go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }
  echo "linters: go install kube-score $KUBE_SCORE_VERSION"
  GOBIN="$bin" go install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
  echo "$KUBE_SCORE_VERSION" >"$stamp"
fi

if [[ -x "$venv/bin/checkov" && "$("$venv/bin/checkov" --version 2>/dev/null)" == "$CHECKOV_VERSION" ]]; then
  echo "linters: checkov $CHECKOV_VERSION cached"
else
  echo "linters: pip install checkov==$CHECKOV_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  [[ "$("$venv/bin/checkov" --version)" == "$CHECKOV_VERSION" ]]
fi
