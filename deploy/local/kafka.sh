#!/usr/bin/env bash
# Local single-node Kafka broker (KRaft) for PORTline development and tests.
#
# Usage: deploy/local/kafka.sh {fetch|start|stop|status|wait}
#
#   fetch   download the broker jars (Maven Central) into the lib dir; cached
#           by a hash of deploy/local/pom.xml, so a second fetch is a no-op
#   start   fetch, format the storage on first start, launch the broker in the
#           background and wait until it is ready; no-op if already running
#   stop    SIGTERM, up to 30 s grace, then SIGKILL; no-op if not running
#   status  print whether the broker is running/ready (exit 0 running, 3 not)
#   wait    wait until the broker is ready (KAFKA_WAIT_SECONDS, default 90)
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS  if set, an external broker is used: start/stop/wait
#                            do nothing, status only reports it
#   PORTLINE_VAR_DIR         state root (default <repo>/var); this script uses
#                            $PORTLINE_VAR_DIR/kafka
#   KAFKA_PORT               client (PLAINTEXT) port, default 9092
#   KAFKA_CONTROLLER_PORT    KRaft controller port, default 9093
#   KAFKA_WAIT_SECONDS       readiness timeout for start/wait, default 90
#   KAFKA_LIB_DIR            jar dir, default deploy/local/target/kafka-libs
#   KAFKA_HEAP_OPTS          default "-Xms256m -Xmx1g"
#   KAFKA_SCRAM_PORT         if set, a second client listener, SASL_PLAINTEXT
#                            with SCRAM-SHA-256 and -512, on this port (for
#                            testing the clients' SASL settings); its user is
#                            KAFKA_SCRAM_USER / KAFKA_SCRAM_PASSWORD (default
#                            portline / portline-dev-scram), added when the
#                            storage is formatted (first start only)
#   KAFKA_SCRAM_TLS_CERT     with KAFKA_SCRAM_TLS_KEY (PEM files, the key
#                            unencrypted PKCS#8): that listener is SASL_SSL,
#                            with this server certificate
#   KAFKA_JVM_OPTS           extra JVM options, after the defaults
#                            (-XX:+UseSerialGC -XX:TieredStopAtLevel=1: light
#                            on a 2-core machine; -XX:TieredStopAtLevel=4 here
#                            restores the C2 JIT)
#
# Data, pid file and the generated server.properties live in
# $PORTLINE_VAR_DIR/kafka; 'rm -rf var/kafka' (broker stopped) resets the broker.
# The cluster is formatted once (kafka.tools.StorageTool format, static
# controller.quorum.voters, so no --standalone). After a crash (kill -9) the
# next start takes ~10 s more: the old broker registration must expire.
#
# Everything listens on 127.0.0.1 only. Logs: $PORTLINE_VAR_DIR/kafka/logs/
# (server.log, controller.log, state-change.log, kafka.out for JVM stdout/err).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

VAR_DIR="${PORTLINE_VAR_DIR:-$REPO_ROOT/var}"
STATE_DIR="$VAR_DIR/kafka"
DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"
PID_FILE="$STATE_DIR/kafka.pid"
PROPS_FILE="$STATE_DIR/server.properties"
SERVER_LOG="$LOG_DIR/server.log"
OUT_FILE="$LOG_DIR/kafka.out"

LIB_DIR="${KAFKA_LIB_DIR:-$SCRIPT_DIR/target/kafka-libs}"
POM_FILE="$SCRIPT_DIR/pom.xml"
STAMP_FILE="$LIB_DIR/.pom.sha256"
PROPS_TEMPLATE="$SCRIPT_DIR/server.properties"
LOG4J_CONFIG="$SCRIPT_DIR/log4j2.properties"

KAFKA_PORT_FROM_ENV="${KAFKA_PORT:-}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_WAIT_SECONDS="${KAFKA_WAIT_SECONDS:-90}"
KAFKA_SCRAM_PORT="${KAFKA_SCRAM_PORT:-}"
KAFKA_SCRAM_USER="${KAFKA_SCRAM_USER:-portline}"
KAFKA_SCRAM_PASSWORD="${KAFKA_SCRAM_PASSWORD:-portline-dev-scram}"
KAFKA_SCRAM_TLS_CERT="${KAFKA_SCRAM_TLS_CERT:-}"
KAFKA_SCRAM_TLS_KEY="${KAFKA_SCRAM_TLS_KEY:-}"
STOP_GRACE_SECONDS=30
READY_MARKER="Kafka Server started"

log() { printf 'kafka.sh: %s\n' "$*"; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 {fetch|start|stop|status|wait}" >&2
    exit 2
}

external_broker() {
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        log "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set: using that external broker, nothing to $1"
        return 0
    fi
    return 1
}

check_wait_seconds() {
    [[ "$KAFKA_WAIT_SECONDS" =~ ^[0-9]+$ ]] || die "KAFKA_WAIT_SECONDS must be a whole number of seconds"
}

# Serialise start/stop of this state dir (fd 9 is closed for the broker).
take_lock() {
    exec 9>"$STATE_DIR/.lock"
    flock -w 150 9 || die "another kafka.sh start/stop holds $STATE_DIR/.lock"
}

# For wait/status of a running broker: unless KAFKA_PORT is set, check the
# port it was started with (from the generated server.properties).
use_running_port() {
    local port
    [[ -z "$KAFKA_PORT_FROM_ENV" && -f "$PROPS_FILE" ]] || return 0
    port="$(sed -n 's|^advertised\.listeners=PLAINTEXT://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$PROPS_FILE")"
    KAFKA_PORT="${port:-$KAFKA_PORT}"
}

check_port_var() {
    local name="$1" value="$2"
    if ! [[ "$value" =~ ^[0-9]{1,5}$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
        die "$name must be a TCP port number, got '$value'"
    fi
    printf -v "$name" '%d' "$((10#$value))"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    # shellcheck disable=SC2016  # $1 expands in the inner bash, on purpose
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# True if process $1 exists and is not a zombie (this VM's init reaps
# orphans lazily, and kill -0 succeeds on a zombie).
proc_alive() {
    local state
    [[ -r "/proc/$1/stat" ]] || return 1
    state="$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)"
    [[ -n "$state" && "$state" != Z ]]
}

# Pid of our running broker, or nothing. Cleans up a stale pid file.
running_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 0
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    if [[ -z "$pid" ]] || ! proc_alive "$pid"; then
        rm -f "$PID_FILE"
        return 0
    fi
    # Alive: make sure it is our broker and not a recycled pid.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; then
        echo "$pid"
    fi
}

require_java() {
    command -v java >/dev/null 2>&1 || die "java not found on PATH (Kafka 4.1 needs Java 17+)"
}

pom_hash() {
    sha256sum "$POM_FILE" | cut -d' ' -f1
}

cmd_fetch() {
    local want tmp
    want="$(pom_hash)"
    if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$want" ]]; then
        log "jars up to date in $LIB_DIR"
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH (needed once to fetch the Kafka jars)"
    log "fetching Kafka jars with Maven into $LIB_DIR ..."
    mkdir -p "$(dirname "$LIB_DIR")"
    tmp="$(mktemp -d "$LIB_DIR.tmp.XXXXXX")"
    # Output captured: Maven 3.8 prints ANSI resets even with -q -B.
    if ! mvn -q -B -Dstyle.color=never -f "$POM_FILE" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$tmp.log" 2>&1; then
        cat "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        die "Maven could not fetch the Kafka jars (output above)"
    fi
    rm -f "$tmp.log"
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

render_props() {
    local tmp
    tmp="$(mktemp "$PROPS_FILE.XXXXXX")"
    # '|' cannot appear in the substituted values except in a path; guard it.
    [[ "$DATA_DIR" != *"|"* ]] || die "state dir path must not contain '|': $DATA_DIR"
    sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
        -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|@KAFKA_DATA_DIR@|$DATA_DIR|g" \
        "$PROPS_TEMPLATE" >"$tmp"
    if [[ -n "$KAFKA_SCRAM_PORT" ]]; then
        [[ "$KAFKA_SCRAM_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_SCRAM_PORT must be a port number"
        local protocol=SASL_PLAINTEXT
        [[ -z "$KAFKA_SCRAM_TLS_CERT" ]] || protocol=SASL_SSL
        local scram="$protocol://127.0.0.1:$KAFKA_SCRAM_PORT" prefix="listener.name.${protocol,,}"
        sed -i -e "s|^listeners=PLAINTEXT://\([^,]*\),|listeners=PLAINTEXT://\1,$scram,|" \
            -e "s|^advertised\.listeners=\(.*\)$|advertised.listeners=\1,$scram|" \
            -e "s|^listener\.security\.protocol\.map=\(.*\)$|listener.security.protocol.map=\1,$protocol:$protocol|" \
            "$tmp"
        cat >>"$tmp" <<EOF_SCRAM
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
$prefix.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
$prefix.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF_SCRAM
        if [[ -n "$KAFKA_SCRAM_TLS_CERT" ]]; then
            [[ -r "$KAFKA_SCRAM_TLS_CERT" && -r "$KAFKA_SCRAM_TLS_KEY" ]] \
                || die "KAFKA_SCRAM_TLS_CERT and KAFKA_SCRAM_TLS_KEY must be readable PEM files"
            # A PEM key store is one file: the private key, then the certificate chain.
            cat "$KAFKA_SCRAM_TLS_KEY" "$KAFKA_SCRAM_TLS_CERT" >"$STATE_DIR/scram-keystore.pem"
            cat >>"$tmp" <<EOF_TLS
$prefix.ssl.keystore.type=PEM
$prefix.ssl.keystore.location=$STATE_DIR/scram-keystore.pem
EOF_TLS
        fi
    fi
    mv "$tmp" "$PROPS_FILE"
}

format_storage() {
    local cluster_id
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        return 0
    fi
    log "formatting KRaft storage in $DATA_DIR (first start)"
    local scram_users=()
    if [[ -n "$KAFKA_SCRAM_PORT" ]]; then
        local mechanism
        for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
            scram_users+=(--add-scram "$mechanism=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
        done
    fi
    mkdir -p "$DATA_DIR"
    cluster_id="$(java -cp "$LIB_DIR/*" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        -Dkafka.logs.dir="$LOG_DIR" kafka.tools.StorageTool random-uuid)"
    [[ -n "$cluster_id" ]] || die "kafka.tools.StorageTool random-uuid printed nothing"
    # Static quorum (controller.quorum.voters): no --standalone /
    # --initial-controllers, which are only for a dynamic quorum
    # (controller.quorum.bootstrap.servers).
    java -cp "$LIB_DIR/*" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        -Dkafka.logs.dir="$LOG_DIR" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS_FILE" "${scram_users[@]}" \
        >"$LOG_DIR/format.out" 2>&1 \
        || { cat "$LOG_DIR/format.out" >&2; die "formatting the Kafka storage failed"; }
    log "cluster id $cluster_id"
}

print_log_tail() {
    if [[ -s "$SERVER_LOG" ]]; then
        echo "----- last 40 lines of $SERVER_LOG -----" >&2
        tail -n 40 "$SERVER_LOG" >&2
    else
        echo "----- $SERVER_LOG is empty or missing -----" >&2
    fi
    if [[ -s "$OUT_FILE" ]]; then
        echo "----- last 40 lines of $OUT_FILE -----" >&2
        tail -n 40 "$OUT_FILE" >&2
    fi
}

is_ready() {
    [[ -f "$SERVER_LOG" ]] && grep -qF "$READY_MARKER" "$SERVER_LOG" && port_open "$KAFKA_PORT"
}

# Wait until broker $1 is ready; fail (with the log tail) if it dies or times out.
wait_ready() {
    local pid="$1" deadline
    deadline=$((SECONDS + KAFKA_WAIT_SECONDS))
    while ! is_ready; do
        if ! proc_alive "$pid"; then
            rm -f "$PID_FILE"
            print_log_tail
            die "Kafka (pid $pid) exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            print_log_tail
            die "Kafka not ready on 127.0.0.1:$KAFKA_PORT after ${KAFKA_WAIT_SECONDS}s (pid $pid still running; '$0 stop' to kill it)"
        fi
        sleep 0.5
    done
    log "ready on 127.0.0.1:$KAFKA_PORT (pid $pid)"
}

cmd_wait() {
    local pid
    external_broker "wait for" && return 0
    check_wait_seconds
    pid="$(running_pid)"
    [[ -n "$pid" ]] || die "Kafka is not running (no live broker pid in $PID_FILE); run '$0 start'"
    use_running_port
    wait_ready "$pid"
}

cmd_start() {
    local pid port started
    external_broker "start" && return 0
    check_port_var KAFKA_PORT "$KAFKA_PORT"
    check_port_var KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
    check_wait_seconds
    mkdir -p "$STATE_DIR" "$LOG_DIR"
    take_lock

    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        log "already running (pid $pid)"
        cmd_wait
        return 0
    fi

    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$port"; then
            die "port 127.0.0.1:$port is already in use by another process (not our broker: no live pid in $PID_FILE); stop it, or set KAFKA_PORT/KAFKA_CONTROLLER_PORT, or KAFKA_BOOTSTRAP_SERVERS to use an external broker"
        fi
    done

    require_java
    started=$SECONDS
    cmd_fetch
    render_props
    format_storage

    # One server.log per run, so 'wait' never sees a previous run's marker.
    if [[ -f "$SERVER_LOG" ]]; then
        mv -f "$SERVER_LOG" "$SERVER_LOG.previous"
    fi

    local -a heap_opts jvm_opts
    read -r -a heap_opts <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
    read -r -a jvm_opts <<<"${KAFKA_JVM_OPTS:-}"
    log "starting broker on 127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)"
    # setsid: own session, so the broker survives the calling shell/terminal.
    setsid java "${heap_opts[@]}" \
        -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -XX:TieredStopAtLevel=1 \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        -Dkafka.logs.dir="$LOG_DIR" \
        "${jvm_opts[@]}" \
        -cp "$LIB_DIR/*" kafka.Kafka "$PROPS_FILE" \
        </dev/null >"$OUT_FILE" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    wait_ready "$pid"
    log "started in $((SECONDS - started))s; bootstrap servers: 127.0.0.1:$KAFKA_PORT"
}

cmd_stop() {
    local pid deadline
    external_broker "stop" && return 0
    if [[ -d "$STATE_DIR" ]]; then
        take_lock
    fi
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        log "not running"
        return 0
    fi
    log "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_GRACE_SECONDS))
    while proc_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "still running after ${STOP_GRACE_SECONDS}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
    done
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        log "external broker: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
        return 0
    fi
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        log "stopped (state dir $STATE_DIR)"
        return 3
    fi
    use_running_port
    if is_ready; then
        log "running and ready (pid $pid) on 127.0.0.1:$KAFKA_PORT; logs in $LOG_DIR"
    else
        log "running but not ready yet (pid $pid); logs in $LOG_DIR"
    fi
}

main() {
    [[ $# -eq 1 ]] || usage
    case "$1" in
        fetch) cmd_fetch ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        wait) cmd_wait ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
