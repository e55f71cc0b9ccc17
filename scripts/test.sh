#!/usr/bin/env bash
# The whole test suite: unit and integration (real worker, real Redis), once
# on SQLite and once on PostgreSQL. Extra arguments go to pytest.
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
status=0
echo "=== tests on SQLite ==="
env -u DATABASE_URL .venv/bin/pytest "$@" || status=$?
echo "=== tests on PostgreSQL ==="
DATABASE_URL="$PG_URL" .venv/bin/pytest "$@" || status=$?
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
