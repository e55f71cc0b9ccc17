#!/usr/bin/env bash
# make bench: saga_bench at its defaults, on SQLite and on PostgreSQL, each on a
# database of its own (var/bench.sqlite3, and BENCH_POSTGRES_URL's database,
# created when missing). Extra arguments go to saga_bench:
#   bash scripts/bench.sh --sagas 500 --json
set -euo pipefail
cd "$(dirname "$0")/.."
# This process on a laptop's settings; saga_bench runs its workers at production's (DEBUG off).
export DEBUG="${DEBUG:-1}"

bash scripts/setup.sh
bash scripts/services.sh redis postgres

PY=.venv/bin/python
SQLITE_URL="sqlite:///$PWD/var/bench.sqlite3"
PG_URL="${BENCH_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/saga_bench}"

$PY - "$PG_URL" <<'PY'
import sys
from urllib.parse import urlsplit

import psycopg

url = urlsplit(sys.argv[1])
name = url.path.lstrip("/")
with psycopg.connect(url._replace(path="/postgres").geturl(), autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
        conn.execute(f'CREATE DATABASE "{name}"')
PY

status=0
for url in "$SQLITE_URL" "$PG_URL"; do
    echo "=== saga_bench on ${url%%://*} ==="
    DATABASE_URL="$url" $PY manage.py migrate --noinput -v0
    DATABASE_URL="$url" $PY manage.py saga_bench "$@" || status=$?
done
exit $status
