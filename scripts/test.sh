#!/usr/bin/env bash
# The whole test suite: unit and integration (real worker, real Redis), once
# on SQLite and once on PostgreSQL. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/services.sh redis postgres

PG_URL="${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/sagas}"
status=0
echo "=== tests on SQLite ==="
env -u DATABASE_URL .venv/bin/pytest "$@" || status=$?
echo "=== tests on PostgreSQL ==="
DATABASE_URL="$PG_URL" .venv/bin/pytest "$@" || status=$?
exit $status
