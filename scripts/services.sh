#!/usr/bin/env bash
# Make sure the services the project needs answer on localhost:
#   scripts/services.sh redis [postgres]
# A running one is used as it is. Otherwise it is started from PATH, and
# installed from Debian's packages first when missing and we are root.
# Servers this script starts are listed in var/started-services so that the
# caller can stop exactly those (scripts/run.sh does on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/log

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"

answers() {  # answers HOST PORT: is something listening there?
    python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

wait_for() {  # wait_for NAME PORT
    for _ in $(seq 1 60); do
        answers 127.0.0.1 "$2" && return 0
        sleep 0.5
    done
    echo "services: $1 did not start on port $2" >&2
    exit 1
}

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "services: $* is not installed and I cannot install it (need root and apt-get)." >&2
        echo "services: install it, or point the settings at a running server." >&2
        exit 1
    fi
    echo "services: installing $* from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
    if answers 127.0.0.1 "$REDIS_PORT"; then return 0; fi
    command -v redis-server >/dev/null || apt_install redis-server
    echo "services: starting redis-server on 127.0.0.1:$REDIS_PORT"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --pidfile "$PWD/var/redis.pid" --logfile "$PWD/var/log/redis.log" --dir "$PWD/var"
    wait_for redis "$REDIS_PORT"
    echo "redis $PWD/var/redis.pid" >> var/started-services
}

ensure_postgres() {
    if answers 127.0.0.1 "$PG_PORT"; then return 0; fi
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        apt_install postgresql
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -1)"
    echo "services: starting PostgreSQL $version on 127.0.0.1:$PG_PORT"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
    wait_for postgresql "$PG_PORT"
    # A fresh cluster asks for a password over TCP: give the postgres role the
    # one the test script uses (a trust-auth server ignores it).
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    echo "postgres $version" >> var/started-services
}

for service in "$@"; do
    case "$service" in
        redis) ensure_redis ;;
        postgres) ensure_postgres ;;
        *) echo "services: unknown service $service" >&2; exit 2 ;;
    esac
done
