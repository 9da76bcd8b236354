#!/usr/bin/env bash
# Local services for Lakeward's tests, demo and benchmarks, bound to 127.0.0.1:
#   * PostgreSQL 15 (Debian packages), dedicated cluster 15/lakeward, wal_level=logical
#   * Apache Kafka (KRaft, single combined broker+controller), jars from Maven Central
#
# Usage: deploy/local/services.sh [start|stop|status|restart|kafka-topics ARGS...]
#   start (default)  install what is missing, then start what is not running (idempotent)
#   stop             stop Kafka and the PostgreSQL cluster (data is kept)
#   status           one line per service; exit 0 only when both answer
#   restart          stop + start
#   kafka-topics     run Kafka's TopicCommand against the local broker, e.g.
#                    services.sh kafka-topics --list
#
# Environment (all optional):
#   LAKEWARD_SERVICES_DIR            Kafka jars, data, logs, pid   (/var/lib/lakeward-services)
#   LAKEWARD_PG_PORT                 PostgreSQL port               (5432)
#   LAKEWARD_KAFKA_PORT              Kafka client port             (9092)
#   LAKEWARD_KAFKA_CONTROLLER_PORT   Kafka KRaft controller port   (9093)
#   LAKEWARD_KAFKA_HEAP              broker heap flags             (-Xms256m -Xmx512m)
#   LAKEWARD_SERVICES_TIMEOUT        seconds to wait for each service to answer (180)
#
# Must run as root on Debian 12 (it may apt-get install postgresql-15, a JRE, maven).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES_DIR="${LAKEWARD_SERVICES_DIR:-/var/lib/lakeward-services}"
TIMEOUT="${LAKEWARD_SERVICES_TIMEOUT:-180}"

PG_VERSION=15
PG_CLUSTER=lakeward
PG_PORT="${LAKEWARD_PG_PORT:-5432}"
PG_BIN="/usr/lib/postgresql/$PG_VERSION/bin"
PG_ETC="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
PG_DATA="/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER"
PG_LOG="/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"

KAFKA_PORT="${LAKEWARD_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${LAKEWARD_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${LAKEWARD_KAFKA_HEAP:--Xms256m -Xmx512m}"
KAFKA_HOME="$SERVICES_DIR/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_LOGS="$KAFKA_HOME/logs"
KAFKA_CONF="$KAFKA_HOME/config"
KAFKA_PID="$KAFKA_HOME/kafka.pid"
KAFKA_OUT="$KAFKA_LOGS/kafka.out"
KAFKA_SERVER_LOG="$KAFKA_LOGS/server.log"
KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

# ---------------------------------------------------------------- helpers

say() { printf '[services] %s\n' "$*"; }
warn() { printf '[services] WARNING: %s\n' "$*" >&2; }

# fail MESSAGE [LOGFILE] [HINT]: print the message, the tail of LOGFILE and a hint; exit 1
fail() {
    printf '[services] ERROR: %s\n' "$1" >&2
    if [ -n "${2:-}" ] && [ -s "$2" ]; then
        printf '[services] ---- last 40 lines of %s ----\n' "$2" >&2
        tail -n 40 "$2" >&2 || true
        printf '[services] ---- end of %s ----\n' "$2" >&2
    fi
    if [ -n "${3:-}" ]; then printf '[services] what to do: %s\n' "$3" >&2; fi
    exit 1
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# port_owner PORT: "pid/command" of the process listening on 127.0.0.1:PORT (best effort)
port_owner() {
    ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n1 || true
}

now() { date +%s; }

need_root() {
    [ "$(id -u)" -eq 0 ] || fail "this step needs root: $1" "" "run as root (sudo make services)"
}

APT_UPDATED=0
# apt_install PKG...: install the packages that are not installed yet
apt_install() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root "apt-get install ${missing[*]}"
    local log="$SERVICES_DIR/apt.log"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update >"$log" 2>&1 ||
            fail "apt-get update failed" "$log" "check the Debian package mirrors in /etc/apt/sources.list*"
        APT_UPDATED=1
    fi
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "${missing[@]}" >>"$log" 2>&1 ||
        fail "apt-get install ${missing[*]} failed" "$log" "fix the apt error above, then re-run make services"
}

# install_file SRC DEST OWNER MODE: copy only when different; returns 0 if it changed DEST
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then return 1; fi
    install -o "${3%%:*}" -g "${3##*:}" -m "$4" "$1" "$2"
    return 0
}

# --------------------------------------------------------------- postgres

pg() { "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -t 2 2>/dev/null; }
pg_running() { pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1; }

pg_install() {
    if [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/psql" ] && command -v pg_createcluster >/dev/null &&
        [ -d "/usr/share/postgresql/$PG_VERSION/extension" ] &&
        dpkg-query -W -f='${Status}' postgresql-contrib 2>/dev/null | grep -q 'ok installed'; then
        return 0
    fi
    apt_install "postgresql-$PG_VERSION" postgresql-contrib
}

# Any other cluster configured on our port (Debian's 15/main on 5432, typically):
# stop it and make it manual so it does not come back after a reboot.
pg_free_port() {
    local ver name port status _rest conf
    while read -r ver name port status _rest; do
        [ -n "$ver" ] || continue
        [ "$ver/$name" = "$PG_VERSION/$PG_CLUSTER" ] && continue
        [ "$port" = "$PG_PORT" ] || continue
        if [[ "$status" == online* ]]; then
            say "stopping PostgreSQL cluster $ver/$name (it holds port $PG_PORT)"
            pg_ctlcluster "$ver" "$name" stop -m fast 9>&- || warn "could not stop cluster $ver/$name"
        fi
        conf="/etc/postgresql/$ver/$name/start.conf"
        if [ -f "$conf" ] && grep -qx 'auto' "$conf"; then
            sed -i 's/^auto$/manual/' "$conf"
            say "cluster $ver/$name set to start manually ($conf)"
        fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
}

pg_create() {
    if [ -f "$PG_ETC/postgresql.conf" ] && [ -f "$PG_DATA/PG_VERSION" ]; then return 0; fi
    # pg_dropcluster leaves our conf.d/zz-lakeward.conf behind: that alone is no cluster
    if [ ! -f "$PG_ETC/postgresql.conf" ] && [ ! -e "$PG_DATA" ]; then rm -rf "$PG_ETC"; fi
    if [ -e "$PG_ETC" ] || [ -e "$PG_DATA" ]; then
        warn "leftovers of cluster $PG_VERSION/$PG_CLUSTER found (config or data dir without the other); dropping them and re-creating the cluster"
        pg_dropcluster --stop "$PG_VERSION" "$PG_CLUSTER" 9>&- 2>/dev/null || true
        rm -rf "$PG_ETC" "$PG_DATA"
    fi
    say "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER (port $PG_PORT)"
    local log="$SERVICES_DIR/pg_createcluster.log"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" --start-conf=auto \
        -- --auth-local=trust --auth-host=trust --username=postgres >"$log" 2>&1 ||
        fail "pg_createcluster $PG_VERSION $PG_CLUSTER failed" "$log" \
            "fix the error above (or 'pg_dropcluster $PG_VERSION $PG_CLUSTER'), then re-run make services"
}

# Writes our settings; returns 0 when something changed (a running server must restart).
pg_configure() {
    local changed=1 cur
    mkdir -p "$PG_ETC/conf.d"
    install_file "$HERE/postgres/lakeward.conf" "$PG_ETC/conf.d/zz-lakeward.conf" postgres:postgres 0644 && changed=0
    install_file "$HERE/postgres/pg_hba.conf" "$PG_ETC/pg_hba.conf" postgres:postgres 0640 && changed=0
    cur="$(pg_conftool -s "$PG_VERSION" "$PG_CLUSTER" postgresql.conf show port 2>/dev/null || true)"
    if [ "$cur" != "$PG_PORT" ]; then
        pg_conftool "$PG_VERSION" "$PG_CLUSTER" postgresql.conf set port "$PG_PORT"
        changed=0
    fi
    if [ -f "$PG_ETC/start.conf" ] && ! grep -qx 'auto' "$PG_ETC/start.conf"; then
        printf 'auto\n' >"$PG_ETC/start.conf"
    fi
    return $changed
}

# A postmaster.pid left by a machine that was reset blocks the start when its pid
# now belongs to another process; remove it when no postgres owns it.
pg_clear_stale_pid() {
    local pidfile="$PG_DATA/postmaster.pid" pid comm
    [ -f "$pidfile" ] || return 0
    pid="$(head -n1 "$pidfile" 2>/dev/null || true)"
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [ -z "$pid" ] || [[ "$comm" != postgres* && "$comm" != postmaster* ]]; then
        say "removing stale $pidfile (pid ${pid:-?} is not a running postgres)"
        rm -f "$pidfile"
    fi
}

pg_start_server() {
    mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql && chmod 2775 /var/run/postgresql
    if pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >"$SERVICES_DIR/pg_ctlcluster.log" 2>&1 9>&-; then
        return 0
    fi
    warn "pg_ctlcluster start failed ($(tail -n1 "$SERVICES_DIR/pg_ctlcluster.log")); trying pg_ctl as postgres"
    { touch "$PG_LOG" && chown postgres:adm "$PG_LOG"; } 2>/dev/null || true
    su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' start -w -t 60 -D '$PG_DATA' -l '$PG_LOG' \
        -o '-c config_file=$PG_ETC/postgresql.conf'" >>"$SERVICES_DIR/pg_ctlcluster.log" 2>&1 9>&- ||
        fail "PostgreSQL $PG_VERSION/$PG_CLUSTER did not start" "$PG_LOG" \
            "read the server log above ($PG_LOG; pg_ctl output in $SERVICES_DIR/pg_ctlcluster.log)"
}

pg_verify() {
    local wal
    wal="$(pg -Atc 'SHOW wal_level' 2>&1)" ||
        fail "PostgreSQL answers pg_isready but 'psql -h 127.0.0.1 -p $PG_PORT -U postgres' fails: $wal" "$PG_LOG" \
            "check $PG_ETC/pg_hba.conf (trust for 127.0.0.1/32) and the server log"
    [ "$wal" = logical ] ||
        fail "PostgreSQL on port $PG_PORT runs with wal_level=$wal, not logical" "$PG_LOG" \
            "is another server on port $PG_PORT? see 'pg_lsclusters'; else 'deploy/local/services.sh restart'"
}

pg_start() {
    local t0 changed=1
    t0="$(now)"
    pg_install
    pg_free_port
    pg_create
    pg_configure && changed=0

    if pg_running; then
        if [ "$changed" -eq 0 ]; then
            say "PostgreSQL settings changed: restarting $PG_VERSION/$PG_CLUSTER"
            pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart -m fast >"$SERVICES_DIR/pg_ctlcluster.log" 2>&1 9>&- ||
                fail "PostgreSQL restart failed" "$PG_LOG" "read the server log above"
        elif pg_ready; then
            pg_verify
            say "PostgreSQL $PG_VERSION/$PG_CLUSTER already running on 127.0.0.1:$PG_PORT"
            return 0
        fi
    else
        if port_open "$PG_PORT"; then
            fail "port $PG_PORT is held by something else: $(port_owner "$PG_PORT")" "" \
                "stop that server, or pick another port: LAKEWARD_PG_PORT=5433 make services (and set LAKEWARD_TEST_PG_DSN)"
        fi
        pg_clear_stale_pid
        say "starting PostgreSQL $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
        pg_start_server
    fi

    local deadline=$(($(now) + TIMEOUT))
    until pg_ready; do
        [ "$(now)" -lt "$deadline" ] ||
            fail "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT within ${TIMEOUT}s" "$PG_LOG" \
                "read the server log above; 'pg_lsclusters' shows the cluster state"
        sleep 0.2
    done
    pg_verify
    say "PostgreSQL ready on 127.0.0.1:$PG_PORT (wal_level=logical, $(($(now) - t0))s)"
}

pg_stop() {
    if ! [ -f "$PG_ETC/postgresql.conf" ]; then
        say "PostgreSQL cluster $PG_VERSION/$PG_CLUSTER does not exist"
        return 0
    fi
    if pg_running; then
        say "stopping PostgreSQL $PG_VERSION/$PG_CLUSTER"
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast 9>&- ||
            su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' stop -m fast -D '$PG_DATA'" 9>&-
    else
        say "PostgreSQL $PG_VERSION/$PG_CLUSTER is not running"
    fi
}

pg_status() {
    if pg_ready && pg -Atc 'SHOW wal_level' >/dev/null 2>&1; then
        say "postgres: up   127.0.0.1:$PG_PORT cluster $PG_VERSION/$PG_CLUSTER wal_level=$(pg -Atc 'SHOW wal_level')"
        return 0
    fi
    say "postgres: down (127.0.0.1:$PG_PORT, cluster $PG_VERSION/$PG_CLUSTER)"
    return 1
}

# ------------------------------------------------------------------ kafka

JAVA=""
find_java() {
    [ -n "$JAVA" ] && return 0
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
        JAVA="$JAVA_HOME/bin/java"
    elif command -v java >/dev/null; then
        JAVA="$(command -v java)"
    else
        apt_install openjdk-17-jre-headless
        JAVA=/usr/bin/java
    fi
    local major
    major="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
    if [ -z "$major" ] || [ "${major%%.*}" -lt 17 ]; then
        fail "Kafka 4 needs Java 17 or newer; $JAVA is Java ${major:-unknown}" "" \
            "apt-get install openjdk-17-jre-headless, or set JAVA_HOME to a JDK >= 17"
    fi
}

# kafka_tool CLASS ARGS...: run one of Kafka's command-line classes from the cached jars
kafka_tool() {
    find_java
    "$JAVA" -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/kafka/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

kafka_pid() { cat "$KAFKA_PID" 2>/dev/null || true; }

# kafka_alive: the pid file names a live kafka.Kafka process
kafka_alive() {
    local pid
    pid="$(kafka_pid)"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka '
}

PROBE_PY="$(command -v /usr/bin/python3 || command -v python3 || true)"
# kafka_probe: the broker answers ApiVersions + Metadata; prints a summary line
kafka_probe() {
    port_open "$KAFKA_PORT" || return 1
    if [ -n "$PROBE_PY" ]; then
        "$PROBE_PY" "$HERE/kafka/probe.py" "$KAFKA_BOOTSTRAP" 3 2>/dev/null
    else
        kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --list >/dev/null 2>&1 &&
            echo "topic list ok"
    fi
}

kafka_fetch_jars() {
    local want stamp="$KAFKA_LIBS/.lakeward-pom.sha256"
    want="$(sha256sum "$HERE/kafka/pom.xml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
    if kafka_alive; then
        say "deploy/local/kafka/pom.xml changed: stopping Kafka to swap its jars"
        kafka_stop
    fi
    if ! command -v mvn >/dev/null; then apt_install maven; fi
    local version tmp="$KAFKA_HOME/libs.tmp.$$" log="$KAFKA_LOGS/mvn.log"
    version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka/pom.xml")"
    say "fetching Kafka $version jars from Maven Central with mvn (first time only)"
    rm -rf "$tmp"
    mvn -B -q -Dstyle.color=never -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1 ||
        { rm -rf "$tmp"; fail "mvn could not fetch the Kafka jars" "$log" \
            "check that mvn reaches Maven Central (try: mvn -B dependency:get -Dartifact=org.apache.kafka:kafka_2.13:$version), then re-run make services"; }
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || fail "mvn ran but fetched no kafka_2.13 jar into $tmp" "$log"
    printf '%s\n' "$want" >"$tmp/.lakeward-pom.sha256"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    say "Kafka jars in $KAFKA_LIBS ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
}

# Renders the config; returns 0 when it changed (a running broker must restart).
kafka_configure() {
    local changed=1 tmp="$KAFKA_CONF/server.properties.tmp"
    sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|@DATA_DIR@|$KAFKA_DATA|g" "$HERE/kafka/server.properties.in" >"$tmp"
    install_file "$tmp" "$KAFKA_CONF/server.properties" root:root 0644 && changed=0
    rm -f "$tmp"
    install_file "$HERE/kafka/log4j2.properties" "$KAFKA_CONF/log4j2.properties" root:root 0644 && changed=0
    return $changed
}

kafka_format() {
    [ -f "$KAFKA_DATA/meta.properties" ] && return 0
    local cid log="$KAFKA_LOGS/format.log"
    if [ ! -s "$KAFKA_HOME/cluster.id" ]; then
        kafka_tool kafka.tools.StorageTool random-uuid >"$KAFKA_HOME/cluster.id" 2>"$log" ||
            fail "kafka StorageTool random-uuid failed" "$log"
    fi
    cid="$(tr -d '[:space:]' <"$KAFKA_HOME/cluster.id")"
    say "formatting Kafka storage (cluster id $cid) in $KAFKA_DATA"
    mkdir -p "$KAFKA_DATA"
    kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_CONF/server.properties" \
        --ignore-formatted >"$log" 2>&1 ||
        fail "formatting Kafka storage failed" "$log" \
            "if $KAFKA_DATA holds a broken install: deploy/local/services.sh stop; rm -rf $KAFKA_DATA; make services"
}

kafka_launch() {
    find_java
    : >"$KAFKA_OUT"
    # setsid + nohup: detached from make's process group and terminal; fd 9 (our lock) closed
    # shellcheck disable=SC2086
    (cd "$KAFKA_HOME" && exec setsid nohup "$JAVA" $KAFKA_HEAP -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dkafka.logs.dir="$KAFKA_LOGS" -Dlog4j2.configurationFile="$KAFKA_CONF/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF/server.properties" \
        </dev/null >>"$KAFKA_OUT" 2>&1 9>&-) &
    local pid=$! i
    disown "$pid" 2>/dev/null || true
    printf '%s\n' "$pid" >"$KAFKA_PID"
    # normally $! is the JVM itself (subshell -> setsid -> nohup -> java all exec); if setsid
    # had to fork, look the JVM up by its command line instead
    for ((i = 0; i < 20; i++)); do
        kafka_alive && return 0
        pid="$(pgrep -n -f "kafka\.Kafka $KAFKA_CONF/server\.properties" || true)"
        if [ -n "$pid" ]; then
            printf '%s\n' "$pid" >"$KAFKA_PID"
            return 0
        fi
        sleep 0.1
    done
}

# Which log explains a failed start: the console output if the JVM died early, else server.log
kafka_failure_log() {
    if [ -s "$KAFKA_OUT" ] || [ ! -s "$KAFKA_SERVER_LOG" ]; then echo "$KAFKA_OUT"; else echo "$KAFKA_SERVER_LOG"; fi
}

kafka_wait_ready() {
    local t0="$1" deadline=$(($(now) + TIMEOUT)) info
    say "waiting for Kafka on $KAFKA_BOOTSTRAP ..."
    while :; do
        if info="$(kafka_probe)"; then
            say "Kafka ready on $KAFKA_BOOTSTRAP: $info ($(($(now) - t0))s)"
            return 0
        fi
        if ! kafka_alive; then
            rm -f "$KAFKA_PID"
            local log
            log="$(kafka_failure_log)"
            grep -q 'ERROR' "$KAFKA_SERVER_LOG" 2>/dev/null && [ "$log" = "$KAFKA_OUT" ] &&
                printf '[services] (also see %s)\n' "$KAFKA_SERVER_LOG" >&2
            fail "Kafka exited during start-up" "$log" \
                "read the log above (all logs: $KAFKA_LOGS). A corrupt data dir can be reset with: deploy/local/services.sh stop; rm -rf $KAFKA_DATA; make services"
        fi
        [ "$(now)" -lt "$deadline" ] ||
            fail "Kafka (pid $(kafka_pid)) did not answer on $KAFKA_BOOTSTRAP within ${TIMEOUT}s" "$KAFKA_SERVER_LOG" \
                "read the log above; 'deploy/local/services.sh restart' retries; LAKEWARD_SERVICES_TIMEOUT raises the wait"
        sleep 0.5
    done
}

kafka_start() {
    local t0 changed=1
    t0="$(now)"
    mkdir -p "$KAFKA_HOME" "$KAFKA_LOGS" "$KAFKA_CONF" "$KAFKA_DATA"
    kafka_fetch_jars
    kafka_configure && changed=0

    if kafka_alive; then
        if [ "$changed" -eq 0 ]; then
            say "Kafka settings changed: restarting the broker"
            kafka_stop
        else
            local info
            if info="$(kafka_probe)"; then
                say "Kafka already running on $KAFKA_BOOTSTRAP (pid $(kafka_pid))"
                return 0
            fi
            say "Kafka process $(kafka_pid) is up but not answering yet"
            kafka_wait_ready "$t0"
            return 0
        fi
    fi
    if [ -f "$KAFKA_PID" ]; then
        say "removing stale Kafka pid file (pid $(kafka_pid) is not running)"
        rm -f "$KAFKA_PID"
    fi
    local p
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$p"; then
            fail "port $p is held by another process: $(port_owner "$p")" "" \
                "stop that process (a Kafka started by hand?), or choose other ports: LAKEWARD_KAFKA_PORT / LAKEWARD_KAFKA_CONTROLLER_PORT"
        fi
    done
    kafka_format
    say "starting Kafka (KRaft, $KAFKA_HEAP) on $KAFKA_BOOTSTRAP, logs in $KAFKA_LOGS"
    kafka_launch
    kafka_wait_ready "$t0"
}

kafka_stop() {
    if ! kafka_alive; then
        rm -f "$KAFKA_PID"
        say "Kafka is not running"
        return 0
    fi
    local pid i
    pid="$(kafka_pid)"
    say "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.5
    done
    if [ -d "/proc/$pid" ]; then
        warn "Kafka did not stop within 60s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$KAFKA_PID"
}

kafka_status() {
    local info
    if kafka_alive && info="$(kafka_probe)"; then
        say "kafka:    up   $KAFKA_BOOTSTRAP pid $(kafka_pid): $info"
        return 0
    fi
    if kafka_alive; then
        say "kafka:    starting/unresponsive ($KAFKA_BOOTSTRAP, pid $(kafka_pid)); logs: $KAFKA_LOGS"
    else
        say "kafka:    down ($KAFKA_BOOTSTRAP)"
    fi
    return 1
}

# ------------------------------------------------------------------- main

lock() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$SERVICES_DIR/.lock"
    flock -w 600 9 || fail "another services.sh has held $SERVICES_DIR/.lock for 10 minutes"
}

cmd="${1:-start}"
[ $# -gt 0 ] && shift
case "$cmd" in
start)
    need_root "start services"
    lock
    t_start="$(now)"
    pg_start
    kafka_start
    say "all services up ($(($(now) - t_start))s): postgres 127.0.0.1:$PG_PORT, kafka $KAFKA_BOOTSTRAP"
    ;;
stop)
    need_root "stop services"
    lock
    kafka_stop
    pg_stop
    ;;
restart)
    "$0" stop
    exec "$0" start
    ;;
status)
    rc=0
    pg_status || rc=3
    kafka_status || rc=3
    exit $rc
    ;;
kafka-topics)
    [ -f "$KAFKA_LIBS/.lakeward-pom.sha256" ] || fail "Kafka jars not fetched yet" "" "run make services first"
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" "$@"
    ;;
-h | --help | help)
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    ;;
*)
    fail "unknown command '$cmd'" "" "use one of: start stop status restart kafka-topics (see --help)"
    ;;
esac
