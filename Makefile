# Two commands on a fresh machine: `make run` (the app with demo data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench-ledger bench-ingest bench-close bench-reads services stop lint

# Invoice PDFs (WeasyPrint) need Pango and a font; on a Debian machine as root they are
# installed here when missing.
SYSTEM_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core

$(STAMP): pyproject.toml
	@if ! ldconfig -p | grep -q 'libpangoft2-1.0.so'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  else echo "invoice PDFs need Pango: install $(SYSTEM_PACKAGES) (Debian) or pango"; fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "browser tests need Debian's chromium at /usr/bin/chromium: apt-get install chromium (or BROWSER_TESTS=0)"; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Starts embedded PostgreSQL/Redis if DATABASE_URL/REDIS_URL are unset, migrates, loads
# demo data, runs the web server, a Celery worker and beat. Ctrl-C stops all it started.
run: install
	$(PY) -m billing.devtools.run

# The whole suite on real PostgreSQL and Redis. No tests collected counts as a failure.
# TEST_WORKERS pytest-xdist processes (each its own test database and Redis database);
# TEST_WORKERS=0 runs it in one process. --dist worksteal: each worker starts on its half
# of the tests in order; a worker that has run its share takes from the end of the other's.
TEST_WORKERS ?= 2
test: install
	$(PY) -m billing.devtools.servers exec -- $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bench-ledger: install
	$(PY) -m billing.devtools.servers exec -- $(PY) bench/ledger.py $(BENCH_ARGS)

bench-ingest: install
	$(PY) -m billing.devtools.servers exec -- $(PY) bench/ingest.py $(BENCH_ARGS)

bench-close: install
	$(PY) -m billing.devtools.servers exec -- $(PY) bench/close.py $(BENCH_ARGS)

# Seeds ~100,000 customers, 10M events and 10M ledger transactions (kept for the next run;
# BENCH_ARGS="--scale 0.01" for a quick one), then times every API, portal and admin read.
bench-reads: install
	$(PY) -m billing.devtools.servers exec -- $(PY) bench/reads.py $(BENCH_ARGS)

services: install
	$(PY) -m billing.devtools.servers start

stop: install
	$(PY) -m billing.devtools.servers stop

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
