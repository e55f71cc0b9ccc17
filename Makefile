# Quick start: `make run` (set up, start everything, run example sagas, serve
# until Ctrl-C) and `make test` (the whole suite, on SQLite and PostgreSQL).
.PHONY: run demo test setup services bench clean

run:
	bash scripts/run.sh

demo:
	bash scripts/run.sh --demo

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh

setup:
	bash scripts/setup.sh

services:
	bash scripts/services.sh redis postgres

clean:
	rm -rf .venv var
