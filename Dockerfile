# One image for web, worker, beat and Flower; docker-compose.yml picks the command.
#
# Online (a registry reachable): `docker compose build` uses python:3.11-slim and PyPI.
# Offline: scripts/compose-offline.sh builds a Debian base image and a wheelhouse in deploy/wheels/
# and passes them in through these two build arguments (docker-compose.offline.yml).
ARG PYTHON_IMAGE=python:3.11-slim

# The runtime's packages go into a virtual environment built in a stage of its own, so that the
# wheels copied in for an offline build stay out of the image.
FROM ${PYTHON_IMAGE} AS deps
# /wheels for an offline build: install from the wheels copied there and nothing else; empty: the index.
ARG WHEELHOUSE=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# The runtime only: the test and benchmark packages (requirements.txt) stay out of the image.
COPY requirements-runtime.txt /tmp/
# Holds only a .gitkeep unless scripts/compose-offline.sh filled it.
COPY deploy/wheels/ /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ${WHEELHOUSE:+--no-index --find-links=$WHEELHOUSE} -r /tmp/requirements-runtime.txt

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# The application only (the layout is fixed: DESIGN.md), so nothing else in the checkout can slip in:
# not .git, var/ (a development database and its tokens), .venv, the tests or the wheels.
COPY manage.py ./
COPY config/ config/
COPY sagas/ sagas/
COPY corporate/ corporate/
COPY scripts/ scripts/
RUN DEBUG=1 python manage.py collectstatic --noinput -v0
RUN useradd --create-home app && mkdir -p /app/var && chown -R app /app/var
USER app
EXPOSE 8000
CMD ["gunicorn", "config.asgi:application", "-k", "uvicorn_worker.UvicornWorker", "--bind", "0.0.0.0:8000", "--workers", "3"]
