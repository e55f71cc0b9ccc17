# Quick start: `make run` (set up, start everything, run example sagas, serve
# until Ctrl-C) and `make test` (the whole suite, on SQLite and PostgreSQL).
# `make docs` serves the guide (docs/, mkdocs.yml) on http://127.0.0.1:8001/.
.PHONY: run demo test setup services bench docs docs-build clean

run:
	bash scripts/run.sh

demo:
	bash scripts/run.sh --demo

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh

docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

setup:
	bash scripts/setup.sh

services:
	bash scripts/services.sh redis postgres

clean:
	rm -rf .venv var
