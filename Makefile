# Lakeward developer entry points. Everything runs as root on Debian 12:
#   make services   install (if missing) and start PostgreSQL 15 + Kafka + MariaDB + MinIO (S3) on 127.0.0.1
#   make lint       ruff and mypy over the repository (configured in pyproject.toml); part of `make test`
#   make test       venv + lint + services, then the test suite (in parallel: TEST_WORKERS)
#   make test-unit  venv, then the tests that need no service (seconds)
#   make demo       PostgreSQL + Kafka + MariaDB + venv, then the demo (DEMO_SECONDS=60 by default)
# See deploy/local/services.sh for the service details and its environment knobs.

SHELL := /bin/bash
.DEFAULT_GOAL := test

# The interpreter the venv is built from: Debian's when it is 3.11 or newer (built with PGO and LTO,
# as the python:3.11 images deploy/Dockerfile starts from are; a plain source build such as pyenv's
# costs the workers a third more CPU, docs/performance.md), else the first python3 on PATH.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST := $(VENV)/bin/pytest
RUFF := $(VENV)/bin/ruff
MYPY := $(VENV)/bin/mypy
VENV_STAMP := $(VENV)/.stamp
SERVICES := deploy/local/services.sh

# Lake directories written by the demo, tests and benchmarks (removed by `make clean`).
LAKE_DIRS ?= lake .lake

# Ports of the local services (services.sh reads the same variables), and the
# endpoints the tests read; override any of them on the command line or in the env.
LAKEWARD_PG_PORT ?= 5432
LAKEWARD_KAFKA_PORT ?= 9092
LAKEWARD_TEST_PG_DSN ?= postgresql://postgres@127.0.0.1:$(LAKEWARD_PG_PORT)/postgres
LAKEWARD_TEST_BROKER ?= 127.0.0.1:$(LAKEWARD_KAFKA_PORT)
export LAKEWARD_PG_PORT LAKEWARD_KAFKA_PORT LAKEWARD_TEST_PG_DSN LAKEWARD_TEST_BROKER
LAKEWARD_MARIADB_PORT ?= 3306
LAKEWARD_TEST_MYSQL_URL ?= mysql://lakeward:lakeward@127.0.0.1:$(LAKEWARD_MARIADB_PORT)
export LAKEWARD_MARIADB_PORT LAKEWARD_TEST_MYSQL_URL
# MinIO: services.sh creates the bucket and sets these fixed test credentials.
LAKEWARD_S3_PORT ?= 9000
LAKEWARD_S3_BUCKET ?= lakeward-test
LAKEWARD_TEST_S3_ENDPOINT ?= http://127.0.0.1:$(LAKEWARD_S3_PORT)
LAKEWARD_TEST_S3_BUCKET ?= $(LAKEWARD_S3_BUCKET)
LAKEWARD_TEST_S3_KEY ?= lakeward
LAKEWARD_TEST_S3_SECRET ?= lakeward-secret
export LAKEWARD_S3_PORT LAKEWARD_S3_BUCKET LAKEWARD_TEST_S3_ENDPOINT LAKEWARD_TEST_S3_BUCKET LAKEWARD_TEST_S3_KEY LAKEWARD_TEST_S3_SECRET

PYTEST_ARGS ?=

.PHONY: services services-stop services-status venv lint test test-unit demo bench clean

services:
	$(SERVICES) start

services-stop:
	$(SERVICES) stop

services-status:
	$(SERVICES) status

venv: $(VENV_STAMP)

# Re-installs only when pyproject.toml is newer than the stamp.
$(VENV_STAMP): pyproject.toml sinks/delta/_records.c
	@test -x $(PIP) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# Both run even when the first fails, so one run shows every finding; either failing fails the target.
lint: venv
	@status=0; $(RUFF) check . || status=1; $(MYPY) || status=1; exit $$status

# The suite runs in TEST_WORKERS pytest-xdist processes: most of its time is spent waiting on the
# services, not on CPU. `--dist loadgroup` keeps each xdist_group on one worker (the MariaDB tests,
# the PostgreSQL crash tests: tests/integration/conftest.py). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
PYTEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: venv lint services
	$(PYTEST) -q -p no:cacheprovider --durations=20 $(PYTEST_PARALLEL) tests $(PYTEST_ARGS)

# The tests that need no service (unit tests, the deploy checks, the Delta file checks), in seconds;
# starts nothing.
test-unit: venv
	$(PYTEST) -q -p no:cacheprovider -m "not integration" tests $(PYTEST_ARGS)

# The demo's lake is local: it needs PostgreSQL, Kafka and MariaDB, not the S3 server (whose first
# build takes minutes on a fresh machine).
demo: venv
	$(SERVICES) start postgres kafka mariadb
	$(PY) -m lakeward.app.demo deploy/lakeward.yaml

bench: services venv
	$(PY) benchmarks/pipeline.py

clean:
	rm -f $(VENV_STAMP)
	rm -rf $(LAKE_DIRS)
