#!/usr/bin/env bash
# Local services for Lakeward's tests, demo and benchmarks, bound to 127.0.0.1:
#   * PostgreSQL 15 (Debian packages), dedicated cluster 15/lakeward, wal_level=logical
#   * Apache Kafka (KRaft, single combined broker+controller), jars from Maven Central
#   * MariaDB 10.11 (Debian's mariadb-server), own datadir, row-based binlog for CDC
#   * MinIO (S3-compatible object storage for S3 lakes), built once with `go install` through the
#     Go module proxy; test credentials lakeward / lakeward-secret, bucket lakeward-test
#
# Usage: deploy/local/services.sh [start|stop|status|restart [SERVICE...]] | kafka-topics ARGS...
#   SERVICE is postgres, kafka, mariadb or s3; without one, the command covers all four
#   start (default)  install what is missing, then start what is not running (idempotent)
#   stop             stop the services (data is kept), e.g. services.sh stop mariadb
#   status           one line per service; exit 0 only when all of them answer
#   restart          stop + start
#   kafka-topics     run Kafka's TopicCommand against the local broker, e.g.
#                    services.sh kafka-topics --list
#
# Environment (all optional):
#   LAKEWARD_SERVICES_DIR            Kafka, MariaDB, MinIO state    (/var/lib/lakeward-services)
#   LAKEWARD_PG_PORT                 PostgreSQL port               (5432)
#   LAKEWARD_KAFKA_PORT              Kafka client port             (9092)
#   LAKEWARD_KAFKA_CONTROLLER_PORT   Kafka KRaft controller port   (9093)
#   LAKEWARD_KAFKA_HEAP              broker heap flags             (-Xms256m -Xmx512m)
#   LAKEWARD_MARIADB_PORT            MariaDB port                  (3306)
#   LAKEWARD_S3_PORT                 MinIO S3 API port             (9000)
#   LAKEWARD_S3_BUCKET               bucket created for the tests  (lakeward-test)
#   GO                               the go binary that builds MinIO (go on PATH, else /usr/local/go/bin/go)
#   LAKEWARD_SERVICES_TIMEOUT        seconds to wait for each service to answer (180)
#
# Must run as root on Debian 12 (it may apt-get install postgresql-15, a JRE, maven, mariadb-server, curl).
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

MARIADB_PORT="${LAKEWARD_MARIADB_PORT:-3306}"
MARIADB_BIN=/usr/sbin/mariadbd
MARIADB_HOME="$SERVICES_DIR/mariadb"
MARIADB_DATA="$MARIADB_HOME/data"
MARIADB_RUN="$MARIADB_HOME/run"
MARIADB_LOGS="$MARIADB_HOME/logs"
MARIADB_CNF="$MARIADB_HOME/lakeward.cnf"
MARIADB_SOCK="$MARIADB_RUN/mariadbd.sock"
MARIADB_PID="$MARIADB_RUN/mariadbd.pid"
MARIADB_ERR="$MARIADB_LOGS/mariadbd.err"
MARIADB_OUT="$MARIADB_LOGS/mariadbd.out"
MARIADB_USER=lakeward
MARIADB_PASSWORD=lakeward

# MinIO tags its releases RELEASE.<timestamp>, which is not semver: the Go module proxy refuses
# those tags ("not available"), so this pins the pseudo-version of one exact commit (master of
# 2026-02-12). A test-only server: Lakeward neither links nor ships it (MinIO is AGPL-3.0).
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
S3_PORT="${LAKEWARD_S3_PORT:-9000}"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
S3_BUCKET="${LAKEWARD_S3_BUCKET:-lakeward-test}"
S3_REGION=us-east-1
S3_ACCESS_KEY=lakeward
S3_SECRET_KEY=lakeward-secret
MINIO_HOME="$SERVICES_DIR/minio"
MINIO_BIN="$MINIO_HOME/bin/minio"
MINIO_GO="$MINIO_HOME/go"
MINIO_DATA="$MINIO_HOME/data"
MINIO_LOGS="$MINIO_HOME/logs"
MINIO_LOG="$MINIO_LOGS/minio.log"
MINIO_PID="$MINIO_HOME/minio.pid"
MINIO_ENV="$MINIO_HOME/minio.env"

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
APT_LOG="$SERVICES_DIR/apt.log"
apt_update() {
    [ "$APT_UPDATED" -eq 0 ] || return 0
    say "apt-get update"
    apt-get update >>"$APT_LOG" 2>&1 ||
        fail "apt-get update failed" "$APT_LOG" "check the Debian package mirrors in /etc/apt/sources.list*"
    APT_UPDATED=1
}

# apt_have_candidates PKG...: the current package lists offer every one of them
apt_have_candidates() {
    local p c
    for p in "$@"; do
        c="$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
        [ -n "$c" ] && [ "$c" != "(none)" ] || return 1
    done
}

# apt_install PKG...: install the packages that are not installed yet. apt-get update runs
# only when the lists lack one of them, or when installing from the current lists fails
# (lists too old: the mirror no longer has those versions).
apt_install() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root "apt-get install ${missing[*]}"
    [ "$APT_UPDATED" -eq 1 ] || : >"$APT_LOG"
    apt_have_candidates "${missing[@]}" || apt_update
    say "apt-get install ${missing[*]}"
    local try
    for try in 1 2; do
        if DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confdef \
            -o Dpkg::Options::=--force-confold "${missing[@]}" >>"$APT_LOG" 2>&1; then
            return 0
        fi
        if [ "$APT_UPDATED" -eq 1 ] || [ "$try" -eq 2 ]; then break; fi
        say "apt-get install failed with the current package lists; updating them and retrying"
        apt_update
    done
    fail "apt-get install ${missing[*]} failed" "$APT_LOG" "fix the apt error above, then re-run make services"
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

# ---------------------------------------------------------------- mariadb

# proc_gone PID: no such process, or only its zombie is left
proc_gone() {
    [ -d "/proc/$1" ] || return 0
    [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)" = Z ]
}

# mariadb_root ARGS...: the mariadb client as root over our socket (root authenticates by unix_socket)
mariadb_root() { mariadb --no-defaults --socket="$MARIADB_SOCK" -u root --connect-timeout=5 "$@"; }
# mariadb_tcp ARGS...: the client as the lakeward user over TCP, the way the tests connect
mariadb_tcp() {
    MYSQL_PWD="$MARIADB_PASSWORD" mariadb --no-defaults -h 127.0.0.1 -P "$MARIADB_PORT" -u "$MARIADB_USER" \
        --connect-timeout=3 "$@"
}
# mariadb_ping: our server answers on its socket
mariadb_ping() {
    [ -S "$MARIADB_SOCK" ] &&
        mariadb-admin --no-defaults --socket="$MARIADB_SOCK" -u root --connect-timeout=2 ping >/dev/null 2>&1
}

# mariadb_is_ours PID: PID is a mariadbd running with our config file
mariadb_is_ours() {
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] &&
        tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "--defaults-file=$MARIADB_CNF"
}

# mariadb_pid: pid of our mariadbd (from its pid file, else found by command line); empty if none
mariadb_pid() {
    local pid
    pid="$(cat "$MARIADB_PID" 2>/dev/null || true)"
    if mariadb_is_ours "$pid"; then
        echo "$pid"
        return 0
    fi
    for pid in $(pgrep -x mariadbd 2>/dev/null || true); do
        if mariadb_is_ours "$pid"; then
            echo "$pid"
            return 0
        fi
    done
}

mariadb_install() {
    if [ -x "$MARIADB_BIN" ] && command -v mariadb-install-db >/dev/null && command -v mariadb >/dev/null &&
        command -v mariadb-admin >/dev/null && getent passwd mysql >/dev/null; then
        return 0
    fi
    apt_install mariadb-server
    [ -x "$MARIADB_BIN" ] ||
        fail "mariadb-server is installed but $MARIADB_BIN is missing" "$SERVICES_DIR/apt.log" \
            "reinstall it: apt-get install --reinstall mariadb-server"
}

# Renders the config; returns 0 when it changed (a running server must restart).
mariadb_configure() {
    local changed=1 tmp="$MARIADB_HOME/lakeward.cnf.tmp"
    if [ ${#MARIADB_SOCK} -gt 100 ]; then
        fail "the MariaDB socket path is too long for a unix socket: $MARIADB_SOCK" "" \
            "use a shorter LAKEWARD_SERVICES_DIR"
    fi
    sed -e "s|@PORT@|$MARIADB_PORT|g" -e "s|@DATADIR@|$MARIADB_DATA|g" -e "s|@SOCKET@|$MARIADB_SOCK|g" \
        -e "s|@PIDFILE@|$MARIADB_PID|g" -e "s|@ERRLOG@|$MARIADB_ERR|g" "$HERE/mariadb/lakeward.cnf.in" >"$tmp"
    install_file "$tmp" "$MARIADB_CNF" root:root 0644 && changed=0
    rm -f "$tmp"
    return $changed
}

# mariadb-install-db, once: into a temporary dir that becomes the datadir only when it succeeded
mariadb_init() {
    [ -f "$MARIADB_DATA/mysql/global_priv.frm" ] && return 0
    if [ -e "$MARIADB_DATA" ]; then
        fail "$MARIADB_DATA exists but holds no MariaDB system tables (mysql/global_priv.frm)" "$MARIADB_ERR" \
            "if nothing in it matters: deploy/local/services.sh stop mariadb; rm -rf $MARIADB_DATA; make services"
    fi
    local tmp="$MARIADB_HOME/data.tmp" log="$MARIADB_LOGS/install-db.log"
    say "initializing the MariaDB datadir $MARIADB_DATA (mariadb-install-db, first time only)"
    rm -rf "$tmp"
    install -d -o mysql -g mysql -m 0750 "$tmp"
    mariadb-install-db --no-defaults --user=mysql --datadir="$tmp" --auth-root-authentication-method=socket \
        --skip-test-db --skip-name-resolve --skip-log-bin >"$log" 2>&1 9>&- ||
        {
            rm -rf "$tmp"
            fail "mariadb-install-db failed" "$log" "fix the error above, then re-run make services"
        }
    mv "$tmp" "$MARIADB_DATA"
}

# mariadb_kill_wait PID WHAT: SIGTERM (a clean InnoDB shutdown), SIGKILL after 120s
mariadb_kill_wait() {
    local i
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do
        proc_gone "$1" && return 0
        sleep 0.2
    done
    warn "$2 (pid $1) did not stop within 120s; killing it"
    kill -KILL "$1" 2>/dev/null || true
    sleep 1
}

# Debian's own server (datadir /var/lib/mysql, the mariadb service) listens on 3306 too. When
# it holds our port, stop it and keep it from starting at boot. Anything else: fail.
mariadb_free_port() {
    port_open "$MARIADB_PORT" || return 0
    local pid
    pid="$(cat /run/mysqld/mysqld.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && [ -d "/proc/$pid" ] && ! mariadb_is_ours "$pid" &&
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" =~ ^(mariadbd|mysqld)$ ]] &&
        ss -Hltnp "sport = :$MARIADB_PORT" 2>/dev/null | grep -q "pid=$pid,"; then
        say "stopping Debian's own MariaDB server (pid $pid, /var/lib/mysql): it holds port $MARIADB_PORT"
        if [ -d /run/systemd/system ]; then
            systemctl disable --now mariadb.service >/dev/null 2>&1 || true
            say "mariadb.service disabled (systemctl enable --now mariadb undoes this)"
        elif [ -x /etc/init.d/mariadb ] && ls /etc/rc[2-5].d/S*mariadb >/dev/null 2>&1; then
            update-rc.d mariadb disable >/dev/null 2>&1 || true
            say "init script mariadb disabled at boot (update-rc.d mariadb enable undoes this)"
        fi
        proc_gone "$pid" || mariadb_kill_wait "$pid" "Debian's MariaDB server"
        port_open "$MARIADB_PORT" || return 0
    fi
    fail "port $MARIADB_PORT is held by another process: $(port_owner "$MARIADB_PORT")" "" \
        "stop that server, or pick another port: LAKEWARD_MARIADB_PORT=$((MARIADB_PORT + 1)) make services (the Makefile derives LAKEWARD_TEST_MYSQL_URL from it)"
}

# mariadb_clear_stale: pid/socket files left by a killed server or a reboot (call only when
# no mariadbd of ours runs; mariadbd would refuse to start next to a stale socket's path otherwise)
mariadb_clear_stale() {
    local f
    for f in "$MARIADB_PID" "$MARIADB_SOCK"; do
        if [ -e "$f" ] || [ -L "$f" ]; then
            say "removing stale $f (no mariadbd of ours is running)"
            rm -f "$f"
        fi
    done
}

mariadb_launch() {
    : >"$MARIADB_OUT"
    chown mysql:mysql "$MARIADB_OUT"
    # setsid + nohup: detached from make's process group and terminal; fd 9 (our lock) closed.
    # Not mariadbd-safe: it would restart a killed server behind our back.
    (cd "$MARIADB_HOME" && exec setsid nohup "$MARIADB_BIN" --defaults-file="$MARIADB_CNF" --user=mysql \
        </dev/null >>"$MARIADB_OUT" 2>&1 9>&-) &
    MARIADB_LAUNCHED=$!
    disown "$MARIADB_LAUNCHED" 2>/dev/null || true
}

mariadb_wait_ready() {
    local deadline=$(($(now) + TIMEOUT))
    say "waiting for MariaDB on 127.0.0.1:$MARIADB_PORT ..."
    until mariadb_ping; do
        if [ -z "$(mariadb_pid)" ] && { [ -z "${MARIADB_LAUNCHED:-}" ] || proc_gone "$MARIADB_LAUNCHED"; }; then
            # the console output normally holds only the open-files warning; show anything else
            if grep -qv 'Could not increase number of max_open_files' "$MARIADB_OUT" 2>/dev/null; then
                printf '[services] ---- console output of mariadbd (%s) ----\n' "$MARIADB_OUT" >&2
                tail -n 20 "$MARIADB_OUT" >&2
            fi
            fail "MariaDB exited during start-up" "$MARIADB_ERR" \
                "read the log above (all logs: $MARIADB_LOGS). A bad setting: fix deploy/local/mariadb/lakeward.cnf.in. Corrupt data (throwaway): rm -rf $MARIADB_DATA; make services"
        fi
        [ "$(now)" -lt "$deadline" ] ||
            fail "MariaDB (pid $(mariadb_pid)) did not answer on $MARIADB_SOCK within ${TIMEOUT}s" "$MARIADB_ERR" \
                "read the log above (crash recovery can be slow); 'deploy/local/services.sh restart mariadb' retries; LAKEWARD_SERVICES_TIMEOUT raises the wait"
        sleep 0.2
    done
}

# mariadb_users: create/refresh the lakeward user (mariadb/users.sql) when that file changed
# since it was last applied to this datadir, or when FORCE=1 is passed
mariadb_users() {
    local want stamp="$MARIADB_DATA/lakeward-users.sha256" out
    want="$(sha256sum "$HERE/mariadb/users.sql" | cut -d' ' -f1)"
    if [ "${1:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
    say "creating MariaDB user '$MARIADB_USER'@'127.0.0.1' and @'localhost' (mariadb/users.sql)"
    out="$(mariadb_root --batch <"$HERE/mariadb/users.sql" 2>&1)" ||
        fail "applying deploy/local/mariadb/users.sql as root over $MARIADB_SOCK failed: $out" "$MARIADB_ERR" \
            "root logs in by unix_socket: check 'mariadb --socket=$MARIADB_SOCK -u root' works as root"
    printf '%s\n' "$want" >"$stamp"
}

# mariadb_check: the server on our port is ours and has the binlog CDC needs, as the lakeward
# user sees it over TCP; prints a summary, or the problem (and returns 1)
mariadb_check() {
    local out datadir fmt image meta logbin file
    out="$(mariadb_tcp -N -B -e "SELECT @@datadir, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@log_bin; SHOW MASTER STATUS" 2>&1)" || {
        echo "'mariadb -h 127.0.0.1 -P $MARIADB_PORT -u $MARIADB_USER' fails: $out"
        return 1
    }
    read -r datadir fmt image meta logbin <<<"$(sed -n 1p <<<"$out")"
    file="$(sed -n '2s/\t.*//p' <<<"$out")"
    if [ "${datadir%/}" != "$MARIADB_DATA" ]; then
        echo "the server on 127.0.0.1:$MARIADB_PORT is not ours: its datadir is $datadir, not $MARIADB_DATA"
        return 1
    fi
    if [ "$logbin" != 1 ] || [ -z "$file" ] || [ "$fmt/$image/$meta" != ROW/FULL/FULL ]; then
        echo "binlog not as configured: log_bin=$logbin binlog_format=$fmt binlog_row_image=$image binlog_row_metadata=$meta master file=${file:-none}"
        return 1
    fi
    echo "binlog_format=ROW, row image/metadata FULL, binlog $file"
}

# mariadb_verify: users.sql applied, then mariadb_check must pass; its summary goes to MARIADB_INFO.
# A failing check re-applies users.sql once (the lakeward user dropped or changed by hand).
MARIADB_INFO=""
mariadb_verify() {
    mariadb_users
    MARIADB_INFO="$(mariadb_check)" && return 0
    mariadb_users 1
    MARIADB_INFO="$(mariadb_check)" ||
        fail "MariaDB answers on its socket but: $MARIADB_INFO" "$MARIADB_ERR" \
            "check $MARIADB_CNF and the log above; 'deploy/local/services.sh restart mariadb' re-applies the settings"
}

mariadb_start() {
    local t0 changed=1 pid
    t0="$(now)"
    mariadb_install
    mkdir -p "$MARIADB_HOME"
    install -d -o mysql -g mysql -m 0755 "$MARIADB_RUN" "$MARIADB_LOGS"
    mariadb_configure && changed=0
    mariadb_init

    pid="$(mariadb_pid)"
    if [ -n "$pid" ]; then
        if [ "$changed" -eq 0 ]; then
            say "MariaDB settings changed: restarting the server (pid $pid)"
            mariadb_stop
        elif mariadb_ping; then
            mariadb_verify
            say "MariaDB already running on 127.0.0.1:$MARIADB_PORT (pid $pid)"
            return 0
        else
            say "MariaDB process $pid is up but not answering yet"
            mariadb_wait_ready
            mariadb_verify
            say "MariaDB ready on 127.0.0.1:$MARIADB_PORT: $MARIADB_INFO ($(($(now) - t0))s)"
            return 0
        fi
    fi
    mariadb_clear_stale
    mariadb_free_port
    say "starting MariaDB $("$MARIADB_BIN" --version 2>/dev/null | grep -o '[0-9][0-9.]*-MariaDB' || true) on 127.0.0.1:$MARIADB_PORT, datadir $MARIADB_DATA, log $MARIADB_ERR"
    mariadb_launch
    mariadb_wait_ready
    mariadb_verify
    say "MariaDB ready on 127.0.0.1:$MARIADB_PORT: $MARIADB_INFO ($(($(now) - t0))s)"
}

mariadb_stop() {
    local pid
    pid="$(mariadb_pid)"
    if [ -z "$pid" ]; then
        say "MariaDB is not running"
        return 0
    fi
    say "stopping MariaDB (pid $pid)"
    mariadb_kill_wait "$pid" "MariaDB"
    # a clean shutdown removes both; a killed server leaves them
    if proc_gone "$pid"; then rm -f "$MARIADB_PID" "$MARIADB_SOCK"; fi
}

mariadb_status() {
    local pid info
    pid="$(mariadb_pid)"
    if [ -n "$pid" ] && info="$(mariadb_check)"; then
        say "mariadb:  up   127.0.0.1:$MARIADB_PORT pid $pid: $info"
        return 0
    fi
    if [ -n "$pid" ]; then
        say "mariadb:  starting/unresponsive (127.0.0.1:$MARIADB_PORT, pid $pid): $info; log: $MARIADB_ERR"
    else
        say "mariadb:  down (127.0.0.1:$MARIADB_PORT)"
    fi
    return 1
}

# --------------------------------------------------------------------- s3

# MinIO comes from source: the Go module proxy is the only place it can be fetched from here. The
# first build downloads ~250 modules and compiles for about 3 minutes on 2 cores; the binary (and
# Go's module and build caches) stay under $MINIO_HOME, so later starts take a second.

GO_CMD=""
find_go() {
    [ -n "$GO_CMD" ] && return 0
    local g
    for g in "${GO:-}" "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go; do
        if [ -n "$g" ] && [ -x "$g" ]; then
            GO_CMD="$g"
            return 0
        fi
    done
    fail "building MinIO needs Go >= 1.21 (it fetches the toolchain MinIO asks for) and no go binary was found" "" \
        "install Go to /usr/local/go (Debian 12's golang-go 1.19 is too old), or set GO=/path/to/go"
}

# s3_curl ARGS...: curl signing the request with AWS SigV4 as the test user (no S3 client needed)
s3_curl() {
    curl -sS --max-time 5 --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" "$@"
}

minio_pid() { cat "$MINIO_PID" 2>/dev/null || true; }

# minio_alive: the pid file names a live minio serving our data dir
minio_alive() {
    local pid
    pid="$(minio_pid)"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && ! proc_gone "$pid" &&
        tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$MINIO_DATA"
}

# minio_live: the S3 API answers its (unauthenticated) liveness probe
minio_live() { curl -sf --max-time 2 -o /dev/null "$S3_ENDPOINT/minio/health/live" 2>/dev/null; }

# The binary is rebuilt only when MINIO_VERSION changes (the stamp next to it names the module).
minio_build() {
    local want="$MINIO_MODULE@$MINIO_VERSION" stamp="$MINIO_HOME/bin/.lakeward-version"
    if [ -x "$MINIO_BIN" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
    if minio_alive; then
        say "MINIO_VERSION changed: stopping MinIO to swap its binary"
        minio_stop
    fi
    find_go
    local t0 tmp="$MINIO_HOME/bin.tmp.$$" log="$MINIO_LOGS/build.log"
    t0="$(now)"
    say "building MinIO $MINIO_VERSION with $GO_CMD install (first time only: ~3 minutes; log $log)"
    rm -rf "$tmp"
    mkdir -p "$tmp" "$MINIO_GO"
    # Own GOPATH and caches under the services dir (a rebuild reuses them); -modcacherw keeps the
    # module cache deletable with rm -rf; CGO off gives a static binary.
    env GOPATH="$MINIO_GO" GOMODCACHE="$MINIO_GO/pkg/mod" GOCACHE="$MINIO_GO/cache" GOBIN="$tmp" \
        GOFLAGS="-modcacherw -trimpath" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" \
        "$GO_CMD" install "$want" >"$log" 2>&1 9>&- ||
        {
            rm -rf "$tmp"
            fail "go install $want failed" "$log" \
                "check that $GO_CMD reaches the module proxy ($("$GO_CMD" env GOPROXY 2>/dev/null)), then re-run make services"
        }
    [ -x "$tmp/minio" ] || fail "go install ran but left no minio binary in $tmp" "$log"
    printf '%s\n' "$want" >"$tmp/.lakeward-version"
    rm -rf "${MINIO_HOME:?}/bin"
    mv "$tmp" "$MINIO_HOME/bin"
    say "MinIO built in $(($(now) - t0))s: $MINIO_BIN"
}

# Renders the environment file; returns 0 when it changed (a running server must restart).
minio_configure() {
    local changed=1 tmp="$MINIO_ENV.tmp"
    # the address is on the command line; it is here too so that a new port counts as a change
    cat >"$tmp" <<CONF
# written by deploy/local/services.sh; MinIO listens on 127.0.0.1:$S3_PORT
MINIO_ROOT_USER=$S3_ACCESS_KEY
MINIO_ROOT_PASSWORD=$S3_SECRET_KEY
MINIO_SITE_REGION=$S3_REGION
MINIO_BROWSER=off
MINIO_UPDATE=off
CONF
    install_file "$tmp" "$MINIO_ENV" root:root 0600 && changed=0
    rm -f "$tmp"
    return $changed
}

minio_launch() {
    : >"$MINIO_LOG"
    # setsid + nohup: detached from make's process group and terminal; fd 9 (our lock) closed.
    # MINIO_BROWSER=off: no web console, so the S3 API is the only listener (MinIO adds [::1] next
    # to 127.0.0.1 by itself: loopback either way).
    # shellcheck disable=SC1090 # rendered by minio_configure
    (cd "$MINIO_HOME" && set -a && . "$MINIO_ENV" && set +a &&
        exec setsid nohup "$MINIO_BIN" server --address "127.0.0.1:$S3_PORT" "$MINIO_DATA" \
            </dev/null >>"$MINIO_LOG" 2>&1 9>&-) &
    local pid=$!
    disown "$pid" 2>/dev/null || true
    printf '%s\n' "$pid" >"$MINIO_PID"
}

# s3_bucket_state: HTTP status of HEAD on the test bucket as the test user (200, 404, 403 ...)
s3_bucket_state() { s3_curl -o /dev/null -w '%{http_code}' -I "$S3_ENDPOINT/$S3_BUCKET" 2>/dev/null || true; }

# minio_bucket: the test bucket exists (created when missing); fails on rejected credentials
minio_bucket() {
    local code out
    code="$(s3_bucket_state)"
    case "$code" in
    200) return 0 ;;
    404)
        say "creating bucket $S3_BUCKET"
        out="$(s3_curl -X PUT -w '\n%{http_code}' "$S3_ENDPOINT/$S3_BUCKET" 2>&1)"
        [ "$(tail -n1 <<<"$out")" = 200 ] ||
            fail "creating bucket $S3_BUCKET on $S3_ENDPOINT failed: $out" "$MINIO_LOG" "read the MinIO log above"
        ;;
    403)
        fail "the S3 server on $S3_ENDPOINT rejects the test credentials ($S3_ACCESS_KEY)" "$MINIO_LOG" \
            "is another S3 server on port $S3_PORT? else 'deploy/local/services.sh restart s3' re-applies $MINIO_ENV"
        ;;
    *) fail "HEAD $S3_ENDPOINT/$S3_BUCKET answered ${code:-nothing}" "$MINIO_LOG" "read the MinIO log above" ;;
    esac
}

minio_wait_ready() {
    local deadline=$(($(now) + TIMEOUT))
    say "waiting for MinIO on $S3_ENDPOINT ..."
    until minio_live; do
        if ! minio_alive; then
            rm -f "$MINIO_PID"
            fail "MinIO exited during start-up" "$MINIO_LOG" \
                "read the log above (all logs: $MINIO_LOGS). A broken data dir (throwaway): rm -rf $MINIO_DATA; make services"
        fi
        [ "$(now)" -lt "$deadline" ] ||
            fail "MinIO (pid $(minio_pid)) did not answer on $S3_ENDPOINT within ${TIMEOUT}s" "$MINIO_LOG" \
                "read the log above; 'deploy/local/services.sh restart s3' retries; LAKEWARD_SERVICES_TIMEOUT raises the wait"
        sleep 0.2
    done
}

minio_start() {
    local t0 changed=1
    t0="$(now)"
    command -v curl >/dev/null || apt_install curl
    mkdir -p "$MINIO_HOME" "$MINIO_LOGS" "$MINIO_DATA"
    minio_build
    minio_configure && changed=0

    if minio_alive; then
        if [ "$changed" -eq 0 ]; then
            say "MinIO settings changed: restarting it"
            minio_stop
        else
            minio_live || minio_wait_ready
            minio_bucket
            say "MinIO already running on $S3_ENDPOINT (pid $(minio_pid)), bucket $S3_BUCKET"
            return 0
        fi
    fi
    if [ -f "$MINIO_PID" ]; then
        say "removing stale MinIO pid file (pid $(minio_pid) is not running)"
        rm -f "$MINIO_PID"
    fi
    if port_open "$S3_PORT"; then
        fail "port $S3_PORT is held by another process: $(port_owner "$S3_PORT")" "" \
            "stop that process, or pick another port: LAKEWARD_S3_PORT=$((S3_PORT + 10)) make services (the Makefile derives LAKEWARD_TEST_S3_ENDPOINT from it)"
    fi
    say "starting MinIO on $S3_ENDPOINT, data $MINIO_DATA, log $MINIO_LOG"
    minio_launch
    minio_wait_ready
    minio_bucket
    say "MinIO ready on $S3_ENDPOINT: bucket $S3_BUCKET, user $S3_ACCESS_KEY ($(($(now) - t0))s)"
}

minio_stop() {
    if ! minio_alive; then
        rm -f "$MINIO_PID"
        say "MinIO is not running"
        return 0
    fi
    local pid i
    pid="$(minio_pid)"
    say "stopping MinIO (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        proc_gone "$pid" && break
        sleep 0.2
    done
    if ! proc_gone "$pid"; then
        warn "MinIO did not stop within 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$MINIO_PID"
}

minio_status() {
    local code
    if minio_alive && minio_live; then
        code="$(s3_bucket_state)"
        if [ "$code" = 200 ]; then
            say "s3:       up   $S3_ENDPOINT pid $(minio_pid): MinIO, bucket $S3_BUCKET"
            return 0
        fi
        say "s3:       up   $S3_ENDPOINT pid $(minio_pid), but HEAD bucket $S3_BUCKET answers ${code:-nothing} (make services creates it)"
        return 1
    fi
    if minio_alive; then
        say "s3:       starting/unresponsive ($S3_ENDPOINT, pid $(minio_pid)); log: $MINIO_LOG"
    else
        say "s3:       down ($S3_ENDPOINT)"
    fi
    return 1
}

# ------------------------------------------------------------------- main

lock() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$SERVICES_DIR/.lock"
    flock -w 600 9 || fail "another services.sh has held $SERVICES_DIR/.lock for 10 minutes"
}

# pick_services NAME...: sets SVC to the named services in start order (default: all)
pick_services() {
    local a want=" "
    [ $# -gt 0 ] || set -- postgres kafka mariadb s3
    for a in "$@"; do
        case "$a" in
        postgres | postgresql | pg) want+="postgres " ;;
        kafka) want+="kafka " ;;
        mariadb | mysql) want+="mariadb " ;;
        s3 | minio) want+="s3 " ;;
        *) fail "unknown service '$a'" "" "use postgres, kafka, mariadb or s3 (or none for all)" ;;
        esac
    done
    SVC=()
    for a in postgres kafka mariadb s3; do
        if [[ "$want" == *" $a "* ]]; then SVC+=("$a"); fi
    done
}

summary() {
    local s out=""
    for s in "${SVC[@]}"; do
        case "$s" in
        postgres) out+=", postgres 127.0.0.1:$PG_PORT" ;;
        kafka) out+=", kafka $KAFKA_BOOTSTRAP" ;;
        mariadb) out+=", mariadb 127.0.0.1:$MARIADB_PORT" ;;
        s3) out+=", s3 $S3_ENDPOINT (bucket $S3_BUCKET)" ;;
        esac
    done
    echo "${out#, }"
}

cmd="${1:-start}"
[ $# -gt 0 ] && shift
case "$cmd" in
start)
    pick_services "$@"
    need_root "start services"
    lock
    t_start="$(now)"
    for s in "${SVC[@]}"; do
        case "$s" in
        postgres) pg_start ;;
        kafka) kafka_start ;;
        mariadb) mariadb_start ;;
        s3) minio_start ;;
        esac
    done
    if [ ${#SVC[@]} -eq 4 ]; then
        say "all services up ($(($(now) - t_start))s): $(summary)"
    else
        say "up ($(($(now) - t_start))s): $(summary)"
    fi
    ;;
stop)
    pick_services "$@"
    need_root "stop services"
    lock
    for ((i = ${#SVC[@]} - 1; i >= 0; i--)); do
        case "${SVC[$i]}" in
        postgres) pg_stop ;;
        kafka) kafka_stop ;;
        mariadb) mariadb_stop ;;
        s3) minio_stop ;;
        esac
    done
    ;;
restart)
    pick_services "$@"
    "$0" stop "$@"
    exec "$0" start "$@"
    ;;
status)
    pick_services "$@"
    rc=0
    for s in "${SVC[@]}"; do
        case "$s" in
        postgres) pg_status || rc=3 ;;
        kafka) kafka_status || rc=3 ;;
        mariadb) mariadb_status || rc=3 ;;
        s3) minio_status || rc=3 ;;
        esac
    done
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
