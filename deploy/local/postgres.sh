#!/usr/bin/env bash
# Private local PostgreSQL cluster for PORTline development and tests.
#
# Usage: deploy/local/postgres.sh {start|stop|status|url|runtime-url}
#
#   start        initdb on first use, start the cluster (pg_ctl -w), make sure
#                the owner role 'portline' (password 'portline', LOGIN CREATEDB),
#                databases 'portline' and 'portline_test' owned by it, and the
#                runtime role 'portline_app' (password 'portline_app', LOGIN
#                only: it owns nothing, so `portline migrate` grants it row
#                access) exist; prints the owner's SQLAlchemy/asyncpg URL on its
#                last line. If the cluster is running, only makes sure of those.
#   stop         pg_ctl stop -m fast; no-op if not running
#   status       running or not, data dir, log file (exit 0 running, 3 not)
#   url          print postgresql+asyncpg://portline:portline@127.0.0.1:<port>/portline
#   runtime-url  the same as the runtime role portline_app
#
# Environment:
#   DATABASE_URL       if set, an external database is used: start/stop do
#                      nothing, url prints $DATABASE_URL
#   PORTLINE_VAR_DIR   state root (default <repo>/var); the cluster lives in
#                      $PORTLINE_VAR_DIR/pg (data/, postgres.log), or in
#                      /tmp/portline-pg-<hash> if the postgres OS user cannot
#                      reach that directory
#   PG_PORT            TCP port on 127.0.0.1, default 55432
#   PG_WAIT_SECONDS    pg_ctl start/stop timeout, default 60
#   PG_BIN             PostgreSQL server binaries, default: newest
#                      /usr/lib/postgresql/*/bin
#
# Run as root (CI does): the server runs as the 'postgres' OS user via runuser.
# Run as another user, everything runs as that user instead.
# Auth is 'trust' and the server listens on 127.0.0.1 only: local use only.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
VAR_DIR="${PORTLINE_VAR_DIR:-$REPO_ROOT/var}"

PG_PORT="${PG_PORT:-55432}"
PG_WAIT_SECONDS="${PG_WAIT_SECONDS:-60}"
PG_OS_USER=postgres
DB_ROLE=portline
DB_PASSWORD=portline
DB_NAMES=(portline portline_test)
# The role the services connect as: what the migrations (run as DB_ROLE) grant it, no more.
RUNTIME_ROLE=portline_app
RUNTIME_PASSWORD=portline_app

PRIMARY_STATE_DIR="$VAR_DIR/pg"
FALLBACK_STATE_DIR="/tmp/portline-pg-$(printf '%s' "$VAR_DIR" | sha256sum | cut -c1-12)"
# Set by resolve_state_dir.
STATE_DIR=""
DATA_DIR=""
LOG_FILE=""

log() { printf 'postgres.sh: %s\n' "$*"; }
die() { printf 'postgres.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 {start|stop|status|url|runtime-url}" >&2
    exit 2
}

external_db() {
    if [[ -n "${DATABASE_URL:-}" ]]; then
        log "DATABASE_URL is set: using that external database, nothing to $1"
        return 0
    fi
    return 1
}

check_settings() {
    if ! [[ "$PG_PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PG_PORT < 1 || 10#$PG_PORT > 65535)); then
        die "PG_PORT must be a TCP port number, got '$PG_PORT'"
    fi
    PG_PORT=$((10#$PG_PORT))
    [[ "$PG_WAIT_SECONDS" =~ ^[0-9]+$ ]] || die "PG_WAIT_SECONDS must be a whole number of seconds"
}

find_pg_bin() {
    local dir
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/pg_ctl" ]] || die "PG_BIN=$PG_BIN has no pg_ctl"
        return 0
    fi
    for dir in $(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/pg_ctl" && -x "$dir/initdb" ]]; then
            PG_BIN="$dir"
            return 0
        fi
    done
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        PG_BIN="$(dirname "$(command -v pg_ctl)")"
        return 0
    fi
    die "PostgreSQL server binaries not found (apt-get install postgresql-15, or set PG_BIN)"
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Run a command as the postgres OS user (from /, so an unreadable cwd does
# not matter).
as_pg() {
    if is_root; then
        (cd / && runuser -u "$PG_OS_USER" -- "$@")
    else
        (cd / && "$@")
    fi
}

pg_can_use() {
    as_pg test -d "$1" -a -x "$1" -a -w "$1" 2>/dev/null
}

set_state_dir() {
    STATE_DIR="$1"
    DATA_DIR="$STATE_DIR/data"
    LOG_FILE="$STATE_DIR/postgres.log"
}

# Pick the state dir of an existing cluster (for stop/status/url): the repo's
# one if it has a cluster the postgres user can reach, else the /tmp fallback
# if that has one, else the repo's one.
resolve_state_dir() {
    if [[ -f "$PRIMARY_STATE_DIR/data/PG_VERSION" ]] && pg_can_use "$PRIMARY_STATE_DIR"; then
        set_state_dir "$PRIMARY_STATE_DIR"
    elif [[ -f "$FALLBACK_STATE_DIR/data/PG_VERSION" ]]; then
        set_state_dir "$FALLBACK_STATE_DIR"
    else
        set_state_dir "$PRIMARY_STATE_DIR"
    fi
}

# For start: create the repo's state dir owned by the postgres user; if the
# postgres user cannot reach it (e.g. the repo is under a 0700 home), use
# /tmp/portline-pg-<hash of the var dir> instead.
prepare_state_dir() {
    mkdir -p "$PRIMARY_STATE_DIR"
    if is_root; then
        chown "$PG_OS_USER:$PG_OS_USER" "$PRIMARY_STATE_DIR"
    fi
    # 0755: the Unix socket lives here; data/ itself stays 0700.
    chmod 0755 "$PRIMARY_STATE_DIR"
    if pg_can_use "$PRIMARY_STATE_DIR"; then
        set_state_dir "$PRIMARY_STATE_DIR"
    else
        rmdir "$PRIMARY_STATE_DIR" 2>/dev/null || true
        log "the '$PG_OS_USER' user cannot reach $PRIMARY_STATE_DIR; using $FALLBACK_STATE_DIR"
        mkdir -p "$FALLBACK_STATE_DIR"
        chmod 0755 "$FALLBACK_STATE_DIR"
        if is_root; then
            chown "$PG_OS_USER:$PG_OS_USER" "$FALLBACK_STATE_DIR"
        fi
        pg_can_use "$FALLBACK_STATE_DIR" || die "the '$PG_OS_USER' user cannot use $FALLBACK_STATE_DIR either"
        set_state_dir "$FALLBACK_STATE_DIR"
    fi
    # A cluster copied in or created by root: give it back to postgres.
    if is_root && [[ -d "$DATA_DIR" && "$(stat -c %U "$DATA_DIR")" != "$PG_OS_USER" ]]; then
        chown -R "$PG_OS_USER:$PG_OS_USER" "$STATE_DIR"
    fi
}

# Unix sockets: the state dir, unless its path is too long for sun_path.
socket_dir() {
    if ((${#STATE_DIR} + ${#PG_PORT} + 12 < 100)); then
        echo "$STATE_DIR"
    else
        echo "/tmp"
    fi
}

# True if process $1 exists and is not a zombie (this VM's init reaps
# orphans lazily, and kill -0 succeeds on a zombie).
proc_alive() {
    local state
    [[ -r "/proc/$1/stat" ]] || return 1
    state="$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)"
    [[ -n "$state" && "$state" != Z ]]
}

# Pid in postmaster.pid, or nothing.
postmaster_pid() {
    [[ -r "$DATA_DIR/postmaster.pid" ]] && head -n 1 "$DATA_DIR/postmaster.pid" | tr -dc '0-9'
    return 0
}

pg_running() {
    local pid
    [[ -f "$DATA_DIR/PG_VERSION" ]] || return 1
    pid="$(postmaster_pid)"
    [[ -n "$pid" ]] && proc_alive "$pid" || return 1
    as_pg "$PG_BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

# After a crash (kill -9, OOM) postmaster.pid and the socket lock file stay
# behind. PostgreSQL copes with that itself when the old pid is gone, but not
# while it is an unreaped zombie (kill -0 succeeds): drop the files then.
remove_stale_lock() {
    local file="$1" pid
    [[ -f "$file" ]] || return 0
    pid="$(head -n 1 "$file" | tr -dc '0-9')"
    if [[ -n "$pid" && -e "/proc/$pid" ]] && ! proc_alive "$pid"; then
        log "removing stale $file (its postmaster, pid $pid, is dead)"
        rm -f "$file"
    fi
}

remove_stale_locks() {
    remove_stale_lock "$DATA_DIR/postmaster.pid"
    remove_stale_lock "$(socket_dir)/.s.PGSQL.$PG_PORT.lock"
}

# Port of the running cluster (line 4 of postmaster.pid), else $PG_PORT.
current_port() {
    local port=""
    if pg_running && [[ -r "$DATA_DIR/postmaster.pid" ]]; then
        port="$(sed -n 4p "$DATA_DIR/postmaster.pid" | tr -dc '0-9')"
    fi
    echo "${port:-$PG_PORT}"
}

port_open() {
    # shellcheck disable=SC2016  # $1 expands in the inner bash, on purpose
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

local_url() {
    echo "postgresql+asyncpg://$DB_ROLE:$DB_PASSWORD@127.0.0.1:$1/${DB_NAMES[0]}"
}

runtime_url() {
    echo "postgresql+asyncpg://$RUNTIME_ROLE:$RUNTIME_PASSWORD@127.0.0.1:$1/${DB_NAMES[0]}"
}

init_cluster() {
    [[ -f "$DATA_DIR/PG_VERSION" ]] && return 0
    log "initdb in $DATA_DIR (first start)"
    rm -rf "$DATA_DIR"
    as_pg "$PG_BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust \
        -E UTF8 --locale=C.UTF-8 >"$STATE_DIR/initdb.log" 2>&1 \
        || { cat "$STATE_DIR/initdb.log" >&2; die "initdb failed"; }
    # Our settings live in portline.conf, rewritten on every start.
    printf "\n# PORTline local cluster (deploy/local/postgres.sh)\ninclude_if_exists = 'portline.conf'\n" \
        | as_pg tee -a "$DATA_DIR/postgresql.conf" >/dev/null
}

write_conf() {
    local sock
    sock="$(socket_dir)"
    as_pg tee "$DATA_DIR/portline.conf" >/dev/null <<EOF
# Written by deploy/local/postgres.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
max_connections = 200
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
}

psql_admin() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres "${@:2}"
}

ensure_role_and_dbs() {
    local port="$1" db
    psql_admin "$port" >/dev/null <<EOF
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_ROLE') THEN
        CREATE ROLE $DB_ROLE LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
    ELSE
        ALTER ROLE $DB_ROLE LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$RUNTIME_ROLE') THEN
        CREATE ROLE $RUNTIME_ROLE LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
            PASSWORD '$RUNTIME_PASSWORD';
    ELSE
        ALTER ROLE $RUNTIME_ROLE LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
            PASSWORD '$RUNTIME_PASSWORD';
    END IF;
END
\$\$;
EOF
    for db in "${DB_NAMES[@]}"; do
        psql_admin "$port" >/dev/null <<EOF
SELECT 'CREATE DATABASE $db OWNER $DB_ROLE ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')
\gexec
ALTER DATABASE $db OWNER TO $DB_ROLE;
EOF
    done
}

take_lock() {
    exec 9>"$STATE_DIR/.lock"
    flock -w 150 9 || die "another postgres.sh start/stop holds $STATE_DIR/.lock"
}

cmd_start() {
    local started=$SECONDS port
    external_db "start" && return 0
    check_settings
    find_pg_bin
    if is_root && ! id "$PG_OS_USER" >/dev/null 2>&1; then
        die "OS user '$PG_OS_USER' does not exist"
    fi
    prepare_state_dir
    take_lock

    if pg_running; then
        port="$(current_port)"
        log "already running (data $DATA_DIR, port $port)"
    else
        if port_open "$PG_PORT"; then
            die "port 127.0.0.1:$PG_PORT is already in use by another process (not this cluster: $DATA_DIR); stop it, or set PG_PORT, or DATABASE_URL to use an external database"
        fi
        init_cluster
        remove_stale_locks
        write_conf
        log "starting PostgreSQL ($PG_BIN) on 127.0.0.1:$PG_PORT, log $LOG_FILE"
        # pg_ctl forks the postmaster off; fd 9 (the lock) is not for it.
        if ! as_pg "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$PG_WAIT_SECONDS" \
            >"$STATE_DIR/pg_ctl.out" 2>&1 9>&-; then
            cat "$STATE_DIR/pg_ctl.out" >&2
            echo "----- last 40 lines of $LOG_FILE -----" >&2
            tail -n 40 "$LOG_FILE" >&2 2>/dev/null || true
            die "PostgreSQL failed to start (or was not ready within ${PG_WAIT_SECONDS}s)"
        fi
        port="$PG_PORT"
        log "started in $((SECONDS - started))s"
    fi
    ensure_role_and_dbs "$port"
    log "roles '$DB_ROLE' (owner) and '$RUNTIME_ROLE' (runtime), databases ${DB_NAMES[*]} ready"
    local_url "$port"
}

cmd_stop() {
    external_db "stop" && return 0
    check_settings
    find_pg_bin
    resolve_state_dir
    if ! pg_running; then
        log "not running"
        return 0
    fi
    take_lock
    log "stopping PostgreSQL (data $DATA_DIR)"
    if ! as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$PG_WAIT_SECONDS" >/dev/null; then
        if ! pg_running; then
            # The postmaster died (or became a zombie) without cleaning up.
            remove_stale_locks
        else
            echo "----- last 40 lines of $LOG_FILE -----" >&2
            tail -n 40 "$LOG_FILE" >&2 2>/dev/null || true
            die "PostgreSQL did not stop within ${PG_WAIT_SECONDS}s"
        fi
    fi
    log "stopped"
}

cmd_status() {
    if [[ -n "${DATABASE_URL:-}" ]]; then
        log "external database: DATABASE_URL is set"
        return 0
    fi
    check_settings
    find_pg_bin
    resolve_state_dir
    if pg_running; then
        log "running on 127.0.0.1:$(current_port) (data $DATA_DIR, log $LOG_FILE)"
    else
        log "stopped (data $DATA_DIR)"
        return 3
    fi
}

cmd_url() {
    if [[ -n "${DATABASE_URL:-}" ]]; then
        echo "$DATABASE_URL"
        return 0
    fi
    check_settings
    find_pg_bin
    resolve_state_dir
    "$1" "$(current_port)"
}

main() {
    [[ $# -eq 1 ]] || usage
    case "$1" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        url) cmd_url local_url ;;
        runtime-url) cmd_url runtime_url ;;
        *) usage ;;
    esac
}

main "$@"
