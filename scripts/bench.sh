#!/usr/bin/env bash
# `make bench` (= `make bench-intake`): intake throughput, end to end, on real Kafka and
# PostgreSQL, with parse-only baselines measured in the same run (tests/bench/intake_bench.py);
# then the scheduler's, reporting's, spike detection's and the dashboard's benchmarks (see the
# end of this file).
#
# Starts a local broker and the private PostgreSQL cluster unless KAFKA_BOOTSTRAP_SERVERS /
# DATABASE_URL name existing ones, and stops what it started. Intake runs on the
# portline_test database (private cluster) in schema `intake`, which is DROPPED and
# re-created on every run; with your own DATABASE_URL its database name must contain
# "test" or "bench" (or set BENCH_ALLOW_RESET=1), so a real database is never wiped.
# Arguments go to the benchmark: scripts/bench.sh --messages 10000 --window 4, or
# make bench BENCH_ARGS="--sqlite". The service's keys, seed and logs live in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
bench_var=""
# shellcheck source=scripts/infra.sh
source scripts/infra.sh

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_infra
  if [[ -n "$bench_var" ]]; then rm -rf "$bench_var"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n "${DATABASE_URL:-}" ]]; then
  db_name="${DATABASE_URL##*/}"
  db_name="${db_name%%\?*}"
  if [[ "$db_name" != *test* && "$db_name" != *bench* && "${BENCH_ALLOW_RESET:-}" != 1 ]]; then
    echo "bench: DATABASE_URL names database '$db_name'; the benchmark drops its 'intake'" \
      "schema. Use a test/bench database or set BENCH_ALLOW_RESET=1." >&2
    exit 2
  fi
fi
echo "== infrastructure"
start_infra

# Not exported: kafka.sh and postgres.sh keep their state under PORTLINE_VAR_DIR.
bench_var="$(mktemp -d "${TMPDIR:-/tmp}/portline-bench.XXXXXX")"
as_bench() { env -u PORTLINE_DB_SCHEMA_PREFIX PORTLINE_ENV=development PORTLINE_VAR_DIR="$bench_var" "$@"; }

echo "== topics"
as_bench "$BIN/portline" topics create

echo "== fresh intake schema (drop, migrate, seed)"
as_bench "$BIN/python" -m tests.bench.prepare drop-schema
as_bench "$BIN/portline" migrate intake
as_bench "$BIN/portline" intake seed-demo >/dev/null

echo "== benchmark"
started_at=$SECONDS
as_bench "$BIN/python" -m tests.bench.intake_bench --var-dir "$bench_var" "$@"

# The same MLLP feed over mutual TLS (client certificate and network), on a fresh schema.
# BENCH_NO_TLS=1 skips it.
if [[ "${BENCH_NO_TLS:-}" != 1 ]]; then
  echo "== intake benchmark over mutual TLS (fresh schema)"
  as_bench "$BIN/python" -m tests.bench.prepare drop-schema
  as_bench "$BIN/portline" migrate intake
  as_bench "$BIN/portline" intake seed-demo >/dev/null
  as_bench "$BIN/python" -m tests.bench.intake_bench --var-dir "$bench_var" --tls --no-ems "$@"
fi

# Scheduler: timers/s with 3 replicas vs 1 runner, and OverdoseReported -> TaskScheduled latency
# (tests/bench/scheduler_bench.py; drops and re-creates schemas bench_scheduler_timers and
# bench_scheduler). BENCH_NO_SCHEDULER=1 skips it.
if [[ "${BENCH_NO_SCHEDULER:-}" != 1 ]]; then
  echo "== scheduler benchmark"
  "$BIN/python" -m tests.bench.scheduler_bench
fi
# Reporting: events applied per second into the read models (the consumer's own path), and
# GET /v1/metrics p50/p99 for a year by month by county with 1,000,000 events loaded
# (tests/bench/reporting_bench.py says exactly how; drops and re-creates schema
# bench_reporting). BENCH_NO_REPORTING=1 skips it; REPORTING_BENCH_ARGS go to it.
if [[ "${BENCH_NO_REPORTING:-}" != 1 ]]; then
  echo "== reporting benchmark"
  # shellcheck disable=SC2086
  "$BIN/python" -m tests.bench.reporting_bench ${REPORTING_BENCH_ARGS:-}
fi
# Spikes: one detection pass over 100 counties for a day (tests/bench/spikes_bench.py; drops
# and re-creates schema bench_spikes). BENCH_NO_SPIKES=1 skips it.
if [[ "${BENCH_NO_SPIKES:-}" != 1 ]]; then
  echo "== spike detection benchmark"
  "$BIN/python" -m tests.bench.spikes_bench
fi

# Dashboard: GET /dashboard p50/p95 for one program's year of 1,000,000 events
# (tests/bench/dashboard_bench.py says exactly how; re-creates schema bench_reporting after the
# reporting benchmark). BENCH_NO_DASHBOARD=1 skips it; DASHBOARD_BENCH_ARGS go to it.
if [[ "${BENCH_NO_DASHBOARD:-}" != 1 ]]; then
  echo "== dashboard benchmark"
  # shellcheck disable=SC2086
  "$BIN/python" -m tests.bench.dashboard_bench ${DASHBOARD_BENCH_ARGS:-}
fi
echo "bench finished in $((SECONDS - started_at)) s"
