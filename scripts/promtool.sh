#!/usr/bin/env bash
# promtool, which checks and unit-tests the alert rules (deploy/prometheus/): Debian's
# `prometheus` package, installed from the distribution's packages when it is missing (root
# only). Prints its path on the last line. PORTLINE_PROMTOOL names another binary; nothing is
# ever downloaded from elsewhere.
set -euo pipefail
want="${PORTLINE_PROMTOOL:-/usr/bin/promtool}"
if [[ ! -x "$want" ]]; then
  if [[ -n "${PORTLINE_PROMTOOL:-}" ]]; then
    echo "promtool.sh: PORTLINE_PROMTOOL=$want is not an executable" >&2
    exit 1
  fi
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "promtool.sh: $want is missing; install Debian's prometheus (apt-get install prometheus) or set PORTLINE_PROMTOOL" >&2
    exit 1
  fi
  echo "promtool.sh: installing Debian's prometheus (for promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends prometheus >&2
fi
"$want" --version >&2
echo "$want"
