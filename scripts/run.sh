#!/usr/bin/env bash
# `make run`: Kafka (unless KAFKA_BOOTSTRAP_SERVERS is given), topics, migrations, all four
# services on the embedded SQLite default, with the demo program and partners seeded (their
# API keys printed). Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
started_kafka=0

cleanup() {
  trap - EXIT INT TERM
  if [[ $started_kafka == 1 ]]; then
    echo "stopping Kafka"
    env -u KAFKA_BOOTSTRAP_SERVERS deploy/local/kafka.sh stop || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
    deploy/local/kafka.sh start
    started_kafka=1
  fi
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}
fi

# Development comes only from here (or an explicit PORTLINE_ENV): everything else defaults to
# production, which refuses to start without its keys and never generates them.
export PORTLINE_ENV="${PORTLINE_ENV:-development}"

"$BIN/portline" topics create
# On SQLite (the default) there are no database roles. With DATABASE_URL on PostgreSQL, set
# DATABASE_OWNER_URL too: migrations then run as the owner and grant DATABASE_URL's role
# (deploy/local/postgres.sh creates both: `url` and `runtime-url`) row access only.
"$BIN/portline" migrate
if [[ "$PORTLINE_ENV" == "development" ]]; then
  "$BIN/portline" intake seed-demo
  # The dashboard for the demo program, signed in as its team lead. The token is in the
  # link's fragment, which a browser never sends: the page trades it for a cookie and drops
  # it from the address bar and history, so it reaches no server log.
  host="${PORTLINE_HOST:-127.0.0.1}"
  [[ "$host" == "0.0.0.0" || "$host" == "::" ]] && host=127.0.0.1
  token="$("$BIN/portline" dev-token --role team_lead --program demo --subject demo-lead)"
  echo "dashboard (demo, team lead; open within 12 h):"
  echo "  http://$host:${PORTLINE_REPORTING_PORT:-8004}/dashboard#token=$token"
fi
"$BIN/portline" run all
