# shellcheck shell=bash
# Sourced by test.sh and bench.sh: start the local Kafka broker and PostgreSQL cluster unless
# KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL name existing ones, and stop on exit what was started.
# After `start_infra`, both variables are exported (DATABASE_URL only when it was given, or
# pointing at the private cluster's portline_test database as the owner role, with
# PORTLINE_TEST_RUNTIME_DATABASE_URL pointing at it as the runtime role).

started_infra=()

stop_infra() {
  # The stop commands treat these variables as "an external one is in use": unset them.
  for svc in "${started_infra[@]}"; do
    env -u KAFKA_BOOTSTRAP_SERVERS -u DATABASE_URL deploy/local/"$svc".sh stop || true
  done
}

start_infra() {
  if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
      deploy/local/kafka.sh start
      started_infra+=(kafka)
    fi
    export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}
    # The local broker's log directory (deploy/local/kafka.sh): the PHI scan reads its segments.
    PORTLINE_TEST_KAFKA_DATA_DIR="$(realpath -m "${PORTLINE_VAR_DIR:-var}")/kafka/data"
    export PORTLINE_TEST_KAFKA_DATA_DIR
  fi
  if [[ -z "${DATABASE_URL:-}" ]]; then
    if ! deploy/local/postgres.sh status >/dev/null 2>&1; then
      started_infra+=(postgres)
    fi
    # Also when it runs already: start makes sure of the owner and runtime roles.
    deploy/local/postgres.sh start
    DATABASE_URL="$(deploy/local/postgres.sh url)"
    DATABASE_URL="${DATABASE_URL%/*}/portline_test"
    if [[ -z "${PORTLINE_TEST_RUNTIME_DATABASE_URL:-}" ]]; then
      PORTLINE_TEST_RUNTIME_DATABASE_URL="$(deploy/local/postgres.sh runtime-url)"
      PORTLINE_TEST_RUNTIME_DATABASE_URL="${PORTLINE_TEST_RUNTIME_DATABASE_URL%/*}/portline_test"
      export PORTLINE_TEST_RUNTIME_DATABASE_URL
    fi
  fi
  export DATABASE_URL
  echo "Kafka at $KAFKA_BOOTSTRAP_SERVERS; PostgreSQL at ${DATABASE_URL%%@*}@…"
}
