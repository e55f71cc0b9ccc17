#!/bin/sh
# Entry point of the Redis image scripts/compose-offline.sh builds from Debian's package, for
# machines that reach no image registry. Like the official image: runs as redis, keeps its files in
# /data (the working directory), and answers clients on the network without protected mode (the
# official image compiles it off); the compose file publishes Redis on no host port.
set -eu
if [ "${1:-}" = redis-server ]; then
    shift
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis .
        exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
    fi
    exec redis-server --protected-mode no "$@"
fi
exec "$@"
