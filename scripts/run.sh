#!/usr/bin/env bash
# make run:  set up, start worker + beat + web + Flower, run example sagas,
#            print where to look, serve until Ctrl-C stops what it started.
# make demo: the same set-up and example sagas without beat, web or Flower;
#            exit 0 only if every example ended as expected.
set -euo pipefail
cd "$(dirname "$0")/.."
# A laptop: DEBUG on (the development key, * hosts, failure injection, /metrics on localhost).
# Settings default to production's, DEBUG off.
export DEBUG="${DEBUG:-1}"

MODE=serve
[ "${1:-}" = "--demo" ] && MODE=demo
WEB_PORT="${WEB_PORT:-8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
DEMO_SAGAS="${DEMO_SAGAS:-12}"
DEMO_FAILURE_RATE="${DEMO_FAILURE_RATE:-0.3}"
PY=.venv/bin/python

bash scripts/setup.sh
mkdir -p var/log
rm -f var/started-services
bash scripts/services.sh redis
$PY manage.py migrate --noinput -v0
ADMIN_LINE="$($PY manage.py ensure_admin)"

pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "stopping: ${pids[*]:-nothing}"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 40); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.25
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if grep -q '^redis ' var/started-services 2>/dev/null; then
        kill -TERM "$(cat var/redis.pid)" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME COMMAND...: run in the background, log to var/log/NAME.log
    local name=$1; shift
    "$@" > "var/log/$name.log" 2>&1 &
    pids+=($!)
}

start worker .venv/bin/celery -A config worker -E -l info -c 2
if [ "$MODE" = serve ]; then
    start beat .venv/bin/celery -A config beat -l info -s var/celerybeat-schedule
    # An ASGI server: the admin, the API, /metrics and the live page's WebSocket on one port.
    # The landing page (/) links Flower where this script starts it.
    SAGAS_FLOWER_URL="${SAGAS_FLOWER_URL:-http://127.0.0.1:$FLOWER_PORT/}" \
        start web .venv/bin/uvicorn config.asgi:application --host 127.0.0.1 --port "$WEB_PORT" --ws wsproto
    FLOWER_UNAUTHENTICATED_API=true start flower .venv/bin/celery -A config flower \
        --port="$FLOWER_PORT" --address=127.0.0.1
fi

status=0
$PY manage.py saga_demo --examples --worker-wait 60 --sagas "$DEMO_SAGAS" --failure-rate "$DEMO_FAILURE_RATE" --seed 1 || status=$?

if [ "$MODE" = demo ]; then
    [ $status = 0 ] && echo "demo: every example saga ended as expected" || echo "demo: FAILED (see above)"
    exit $status
fi

cat <<INFO

The orchestrator is running (logs in var/log/). Look here:
  start here  http://127.0.0.1:$WEB_PORT/            (a page linking all of these)
  admin       http://127.0.0.1:$WEB_PORT/admin/      ($ADMIN_LINE)
  live page   http://127.0.0.1:$WEB_PORT/admin/sagas/live/
  metrics     http://127.0.0.1:$WEB_PORT/metrics     (Prometheus text; open on localhost while DEBUG)
  REST API    http://127.0.0.1:$WEB_PORT/api/        (a token: POST /api/auth/token/ with a username and password)
  API docs    http://127.0.0.1:$WEB_PORT/api/docs/
  Flower      http://127.0.0.1:$FLOWER_PORT/
Start more sagas:  .venv/bin/python manage.py saga_demo --sagas 20 --failure-rate 0.2
Ctrl-C stops the worker, beat, web server and Flower started here.
INFO
[ $status = 0 ] || echo "warning: the example sagas did not all end as expected (see above)"
wait
