# Two commands on a fresh machine: `make run` (the app with demo data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench-ledger bench-ingest services stop lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Starts embedded PostgreSQL/Redis if DATABASE_URL/REDIS_URL are unset, migrates, loads
# demo data, runs the web server, a Celery worker and beat. Ctrl-C stops all it started.
run: install
	$(PY) -m billing.dev run

# The whole suite on real PostgreSQL and Redis. No tests collected counts as a failure.
test: install
	$(PY) -m billing.devservices exec -- $(PY) -m pytest $(PYTEST_ARGS)

bench-ledger: install
	$(PY) -m billing.devservices exec -- $(PY) bench/ledger.py $(BENCH_ARGS)

bench-ingest: install
	$(PY) -m billing.devservices exec -- $(PY) bench/ingest.py $(BENCH_ARGS)

services: install
	$(PY) -m billing.devservices start

stop: install
	$(PY) -m billing.devservices stop

lint: install
	$(VENV)/bin/ruff check .
