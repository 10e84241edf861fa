#!/usr/bin/env bash
# `make test`: ruff, mypy and the whole pytest suite against real Kafka and PostgreSQL.
# Starts a local broker and a private PostgreSQL cluster unless KAFKA_BOOTSTRAP_SERVERS /
# DATABASE_URL name existing ones, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
lint=1
if [[ "${1:-}" == "--no-lint" ]]; then lint=0; shift; fi
started=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for svc in "${started[@]}"; do
    env -u KAFKA_BOOTSTRAP_SERVERS -u DATABASE_URL deploy/local/"$svc".sh stop || true
  done
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $lint == 1 ]]; then
  echo "== ruff"
  "$BIN/ruff" check .
  "$BIN/ruff" format --check .
  echo "== mypy"
  "$BIN/mypy"
fi

echo "== infrastructure"
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
    deploy/local/kafka.sh start
    started+=(kafka)
  fi
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}
fi
if [[ -z "${DATABASE_URL:-}" ]]; then
  if ! deploy/local/postgres.sh status >/dev/null 2>&1; then
    deploy/local/postgres.sh start
    started+=(postgres)
  fi
  DATABASE_URL="$(deploy/local/postgres.sh url)"
  export DATABASE_URL="${DATABASE_URL%/*}/portline_test"
fi
echo "Kafka at $KAFKA_BOOTSTRAP_SERVERS; PostgreSQL at ${DATABASE_URL%%@*}@…"

echo "== pytest"
"$BIN/pytest" "${@:-tests}"
