#!/usr/bin/env bash
# Install and start everything the tests need, idempotently; caches live under ~/.cache/hybridorch.
# With arguments, only those setup.d steps run (e.g. `e2e/setup.sh docker guests` skips the Kubernetes build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export DEBIAN_FRONTEND=noninteractive
missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < "$here/packages.txt"
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
for step in "$here"/setup.d/*.sh; do
  [[ -e "$step" ]] || continue
  name="$(basename "$step" .sh)"; name="${name#*-}"
  if (($#)) && [[ " $* " != *" $name "* ]]; then continue; fi
  echo "setup: $(basename "$step")"
  bash "$step"
done
