#!/usr/bin/env bash
# For a machine that reaches Debian's packages and PyPI but no image registry: builds here the images
# docker-compose.yml would pull (a Python base, PostgreSQL, Redis, Prometheus; each a Debian root file
# system from debootstrap with Debian's packages, given to `docker import`) and a wheelhouse of
# requirements-runtime.txt in deploy/wheels/ that the Dockerfile installs from. Then:
#
#   docker compose --env-file deploy/offline.env up -d --build
#
# Images that exist are kept (--rebuild builds them again); the wheelhouse is built every time.
# Needs root (debootstrap), debootstrap, a Docker engine and Python 3.11 with pip (the image's Python).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${SAGAS_OFFLINE_CACHE:-/var/cache/sagas-offline}"
PYTHON="${PYTHON:-python3}"
REBUILD=0
[ "${1:-}" = --rebuild ] && REBUILD=1
# The image names: the same file compose reads.
set -a
. deploy/offline.env
set +a

fail() { echo "compose-offline: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "debootstrap needs root"
command -v debootstrap >/dev/null || fail "debootstrap is missing (apt-get install debootstrap)"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (apt-get install docker.io, then start dockerd)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || fail "the wheelhouse needs Python 3.11, the image's (set PYTHON=...)"

WORK="$(mktemp -d /var/tmp/compose-offline.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE/debs"

# build_image NAME PACKAGES PREPARE [DOCKERFILE-CHANGE...]: a Debian root file system holding
# PACKAGES, made ready by the function PREPARE (given its path), imported as NAME.
build_image() {
    local name="$1" packages="$2" prepare="$3"
    shift 3
    if [ "$REBUILD" = 0 ] && docker image inspect "$name" >/dev/null 2>&1; then
        echo "compose-offline: $name exists (--rebuild to build it again)"
        return
    fi
    local root="$WORK/root" log="$WORK/debootstrap.log"
    echo "compose-offline: $name: debootstrap $SUITE with $packages"
    if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$packages" \
            "$SUITE" "$root" "$MIRROR" >"$log" 2>&1; then
        tail -20 "$log" >&2
        fail "debootstrap for $name failed"
    fi
    "$prepare" "$root"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
    local changes=() change
    for change in "$@"; do changes+=(--change "$change"); done
    tar -C "$root" --numeric-owner -c . | docker import "${changes[@]}" - "$name" >/dev/null
    rm -rf "$root"
    echo "compose-offline: $name built"
}

prepare_python() { :; }

prepare_postgres() {
    # Debian's package made a cluster at install time; the entry point makes the one compose asks for.
    rm -rf "$1"/etc/postgresql/*/main "$1"/var/lib/postgresql/*/main
    install -m 755 deploy/offline/postgres-entrypoint.sh "$1/usr/local/bin/docker-entrypoint.sh"
}

prepare_redis() {
    mkdir -p "$1/data"
    install -m 755 deploy/offline/redis-entrypoint.sh "$1/usr/local/bin/docker-entrypoint.sh"
}

prepare_prometheus() {
    # The official image's layout: data in /prometheus, owned by nobody, the user it runs as.
    mkdir -p "$1/prometheus"
    chown 65534:65534 "$1/prometheus"
}

# An imported image has no environment: PATH is set, or the Dockerfile's ENV PATH=...:$PATH loses it.
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
build_image "$SAGAS_PYTHON_IMAGE" python3,python3-venv prepare_python \
    "ENV PATH=$DEFAULT_PATH" "ENV LANG=C.UTF-8" 'CMD ["python3"]'
build_image "$SAGAS_POSTGRES_IMAGE" postgresql-15 prepare_postgres \
    "ENV LANG=C.UTF-8" "ENV PGDATA=/var/lib/postgresql/data" \
    "ENV PATH=/usr/lib/postgresql/15/bin:$DEFAULT_PATH" \
    'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["postgres"]' "EXPOSE 5432"
build_image "$SAGAS_REDIS_IMAGE" redis-server prepare_redis \
    "ENV PATH=$DEFAULT_PATH" "WORKDIR /data" 'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["redis-server"]' "EXPOSE 6379"
build_image "$SAGAS_PROMETHEUS_IMAGE" prometheus prepare_prometheus \
    "ENV PATH=$DEFAULT_PATH" "WORKDIR /prometheus" "USER nobody" 'ENTRYPOINT ["prometheus"]' \
    'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' "EXPOSE 9090"

echo "compose-offline: wheelhouse of requirements-runtime.txt in deploy/wheels/"
rm -f deploy/wheels/*.whl
"$PYTHON" -m pip wheel -q -r requirements-runtime.txt -w deploy/wheels
# And every pin whatever its marker: this Python may be newer than the image's and skip some.
sed 's/;.*//' requirements-runtime.txt | "$PYTHON" -m pip wheel -q --no-deps -r /dev/stdin -w deploy/wheels
echo "compose-offline: $(ls deploy/wheels/*.whl | wc -l) wheels. Next:"
echo "  docker compose --env-file deploy/offline.env up -d --build"
