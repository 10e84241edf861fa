#!/usr/bin/env bash
# The browser the page tests drive: Debian's chromium, installed from the distribution's
# packages when it is missing (root only). Prints its path on the last line.
# PORTLINE_CHROMIUM names another binary; nothing is ever downloaded from elsewhere.
set -euo pipefail
want="${PORTLINE_CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$want" ]]; then
  if [[ -n "${PORTLINE_CHROMIUM:-}" ]]; then
    echo "chromium.sh: PORTLINE_CHROMIUM=$want is not an executable" >&2
    exit 1
  fi
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "chromium.sh: $want is missing; install Debian's chromium (apt-get install chromium) or set PORTLINE_CHROMIUM" >&2
    exit 1
  fi
  echo "chromium.sh: installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi
"$want" --version >&2
echo "$want"
