#!/usr/bin/env bash
# `make test`: ruff, mypy and the whole pytest suite against real Kafka and PostgreSQL.
# Starts a local broker and a private PostgreSQL cluster unless KAFKA_BOOTSTRAP_SERVERS /
# DATABASE_URL name existing ones, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
lint=1
if [[ "${1:-}" == "--no-lint" ]]; then lint=0; shift; fi
# shellcheck source=scripts/infra.sh
source scripts/infra.sh

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_infra
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The Kubernetes tests need kustomize, built once from the Go module proxy (minutes on a fresh
# machine): build it beside lint and the other tests; tests/deploy runs last and waits for it.
mkdir -p var
deploy/k8s/kustomize.sh >/dev/null 2>var/kustomize-build.log &

if [[ $lint == 1 ]]; then
  echo "== ruff"
  "$BIN/ruff" check .
  "$BIN/ruff" format --check .
  echo "== mypy"
  "$BIN/mypy"
fi

echo "== promtool"
# Debian's prometheus package, for the alert rules' checks (tests/unit/test_alerts.py).
PORTLINE_PROMTOOL="$(scripts/promtool.sh | tail -n 1)"
export PORTLINE_PROMTOOL

echo "== infrastructure"
start_infra
# The dashboard's browser tests drive Debian's chromium (installed here when missing).
PORTLINE_CHROMIUM="$(scripts/chromium.sh | tail -n 1)"
export PORTLINE_CHROMIUM

echo "== pytest"
"$BIN/pytest" "${@:-tests}"
