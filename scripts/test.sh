#!/usr/bin/env bash
# The whole test suite: unit and integration (real worker, real Redis), on
# SQLite and on PostgreSQL. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/services.sh redis postgres
# The browser tests drive Debian's headless Chromium through its chromedriver.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test: installing chromium and chromium-driver from Debian's packages (browser tests)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "test: chromium or chromium-driver missing and I cannot install them: browser tests are skipped" >&2
    fi
fi

PG_URL="${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/sagas}"
mkdir -p var
status=0

# pytest's exit status, with "no test selected" (5) as a pass: arguments may name tests of one part only.
run_pytest() {
    local rc=0
    "$@" || rc=$?
    if [ "$rc" = 5 ]; then rc=0; fi
    return "$rc"
}

# Most tests run on SQLite and PostgreSQL at once (each run has its own queues, cache keys and database;
# most of the time a test waits on a worker, so two runs share two cores well). The tests marked `alone`
# (kills timed to a moment, recoveries within a bound, a push's latency) then run one database after the
# other, with nothing else running.
SQLITE_LOG=var/test-sqlite.log
echo "=== tests on SQLite and PostgreSQL at once (all but those marked alone; SQLite's output follows PostgreSQL's) ==="
run_pytest env -u DATABASE_URL .venv/bin/pytest -m "not alone" "$@" >"$SQLITE_LOG" 2>&1 &
sqlite_run=$!
echo "--- PostgreSQL ---"
run_pytest env DATABASE_URL="$PG_URL" .venv/bin/pytest -m "not alone" "$@" || status=$?
sqlite_status=0
wait "$sqlite_run" || sqlite_status=$?
echo "--- SQLite (ran alongside; exit status $sqlite_status) ---"
cat "$SQLITE_LOG"
if [ "$sqlite_status" != 0 ]; then status=$sqlite_status; fi

echo "=== tests marked alone, on SQLite ==="
run_pytest env -u DATABASE_URL .venv/bin/pytest -m alone "$@" || status=$?
echo "=== tests marked alone, on PostgreSQL ==="
run_pytest env DATABASE_URL="$PG_URL" .venv/bin/pytest -m alone "$@" || status=$?

# RabbitMQ is the other supported broker: when one answers (and no pytest
# arguments narrowed the run), run the engine's integration tests through it.
AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}"
if [ $# = 0 ]; then
    if python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5672), timeout=1).close()' 2>/dev/null; then
        echo "=== engine integration tests with RabbitMQ as broker (PostgreSQL) ==="
        CELERY_BROKER_URL="$AMQP_URL" DATABASE_URL="$PG_URL" .venv/bin/pytest tests/integration/test_execution.py \
            tests/integration/test_reliability.py || status=$?
    else
        echo "=== RabbitMQ does not answer on 127.0.0.1:5672: broker tests with RabbitMQ not run ==="
    fi
fi
exit $status
