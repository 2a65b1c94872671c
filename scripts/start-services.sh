#!/usr/bin/env bash
# Starts the real services the tests use, on loopback and non-default ports, without systemd:
# PostgreSQL (audit store tests) and redis-server (for the session/limits stores). Idempotent:
# a service already answering is left alone. Installs the Debian packages when missing.
#
#   source <(bash scripts/start-services.sh env)   # start, then export the URLs below
#   bash scripts/start-services.sh start | stop | env
#
# Exports (with `env`): PORTCULLIS_TEST_POSTGRES_URL (a role with CREATEDB, so tests can make
# throw-away databases) and PORTCULLIS_TEST_REDIS_URL.
set -euo pipefail
DIR=${PORTCULLIS_SVC_DIR:-${TMPDIR:-/tmp}/portcullis-svc}
PG_PORT=${PORTCULLIS_PG_PORT:-55432}
REDIS_PORT=${PORTCULLIS_REDIS_PORT:-56379}
PG_URL="postgres://portcullis:portcullis@127.0.0.1:$PG_PORT/portcullis"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

pgbin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [ -n "$dir" ] && echo "$dir"
}

install_packages() {
    if ! command -v redis-server >/dev/null || [ -z "$(pgbin)" ]; then
        echo "installing postgresql and redis-server (apt)" >&2
        [ "$(id -u)" = 0 ] || { echo "error: need root to apt-get install postgresql redis-server" >&2; exit 1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql redis-server >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql redis-server >/dev/null; }
    fi
}

start() {
    install_packages
    local bin
    bin=$(pgbin)
    mkdir -p "$DIR/redis"
    if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
        redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --pidfile "$DIR/redis/redis.pid" \
            --dir "$DIR/redis" --save '' --appendonly no --logfile "$DIR/redis/redis.log"
        for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    fi
    install -d -o postgres -g postgres "$DIR/pg" "$DIR/pg/sock"
    if [ ! -f "$DIR/pg/data/PG_VERSION" ]; then
        runuser -u postgres -- "$bin/initdb" -D "$DIR/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
            >"$DIR/pg/initdb.log"
    fi
    if ! runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/pg/data" status >/dev/null 2>&1; then
        # fsync=off: throw-away test data; the audit benchmark states it (see benches/audit.rs).
        runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/pg.log" -w -t 30 \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $DIR/pg/sock -c fsync=off -c max_connections=200" start >/dev/null
    fi
    local psql="psql -h 127.0.0.1 -p $PG_PORT -U postgres -v ON_ERROR_STOP=1 -qtAX"
    if [ "$($psql -c "select 1 from pg_roles where rolname = 'portcullis'")" != 1 ]; then
        $psql -c "create role portcullis login createdb createrole password 'portcullis'"
    fi
    if [ "$($psql -c "select 1 from pg_database where datname = 'portcullis'")" != 1 ]; then
        $psql -c "create database portcullis owner portcullis"
    fi
}

stop() {
    local bin
    bin=$(pgbin || true)
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave 2>/dev/null || true
    if [ -n "$bin" ] && [ -f "$DIR/pg/data/postmaster.pid" ]; then
        runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/pg/data" -m fast -w stop >/dev/null || true
    fi
}

case "${1:-start}" in
    start) start; echo "PORTCULLIS_TEST_POSTGRES_URL=$PG_URL PORTCULLIS_TEST_REDIS_URL=$REDIS_URL" ;;
    env) start; echo "export PORTCULLIS_TEST_POSTGRES_URL=$PG_URL"; echo "export PORTCULLIS_TEST_REDIS_URL=$REDIS_URL" ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
