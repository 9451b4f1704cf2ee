# taskapi — `make run` serves the API, `make test` runs every test. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements-dev.lock pyproject.toml | sha256sum | cut -c1-16)

.PHONY: help install run migrate test coverage compose-test scale-test bigfile faults bench profile load lint format services lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

# uv (pinned in the dev lock) installs the lock: parallel downloads. The lock is complete, hence
# --no-deps. Bytecode is not compiled here (--compile-bytecode compiled every installed package,
# 17 s of a clean clone's 19 s install, mostly for packages nothing imports): `run` and `test`
# clear PYTHONDONTWRITEBYTECODE (this machine sets it), so what is imported is compiled once and
# written, and every later process (test workers, servers and CLIs the tests start) reads it.
$(STAMP): requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $$(grep '^uv==' requirements-dev.lock)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -r requirements-dev.lock -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)  ## create .venv and install the locked dependencies (no-op when unchanged)

migrate: install  ## create the database if missing and apply migrations
	PYTHONDONTWRITEBYTECODE= $(BIN)/taskapi migrate

run: migrate  ## install, create + migrate the database, serve on HOST:PORT
	PYTHONDONTWRITEBYTECODE= $(BIN)/taskapi serve

services:  ## start PostgreSQL and Redis if they are installed but stopped
	@bash scripts/ensure-services.sh

# One pytest process per core and one more (pytest-xdist; TEST_WORKERS=1 for a single one), each
# with its own databases, storage directory and Redis keys; tests go to whichever worker is free.
# The extra one runs while others wait on outages, drains and streams, a fifth of the suite's
# time (on 2 cores, with coverage: 6 m 04 s with 2 workers, 5 m 28 s with 3, 5 m 50 s with 4;
# make test without it, warm clone, back to back: 3 m 31 s with 3, 3 m 38 s with 4).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))

# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (this machine sets it): without
# it every worker rewrote the asserts of every test module and compiled src/ again, and so did
# every server and CLI process a test starts (collection alone: 21 s -> 14 s per worker).
# The plugins are named rather than found through their entry points: pytest rewrites the asserts
# of every module of a distribution it found that way (all of hypothesis and schemathesis), and
# locust's plugin, which no test uses, imported locust into every worker (cold collection with
# coverage 20.4 s -> 17.7 s per worker).
PYTEST := PYTHONDONTWRITEBYTECODE= PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(BIN)/pytest \
  -p xdist.plugin -p pytest_asyncio.plugin -p anyio.pytest_plugin -p _hypothesis_pytestplugin \
  -p schemathesis.pytest.plugin -n $(TEST_WORKERS) --dist worksteal

# `make test` runs every test without a tracer; `make coverage` runs the same tests under
# coverage.py. On Python 3.11 a tracer is called on every line of every frame, libraries'
# included, so it nearly doubles the suite's CPU (same tree, back to back: 4 m 00 s without,
# 6 m 25 s with). CI (.ci/run) runs both: every test, then the coverage floor.
test: install services  ## install, make sure PostgreSQL and Redis are up, run the test suite
	$(PYTEST) --durations=25 $(PYTEST_ARGS)

# Branch coverage of src/taskapi, subprocesses included, is printed; under the floor in
# pyproject.toml the run fails.
coverage: install services  ## the test suite under coverage.py: branch coverage printed, fails under the floor
	$(PYTEST) -p pytest_cov.plugin --cov $(PYTEST_ARGS)

compose-test: install  ## the real image and compose.yaml, end to end (own Docker engine; docs/deployment.md)
	bash scripts/compose/run.sh e2e

scale-test: install  ## 3 API replicas behind the proxy: shared limits and caches, SIGTERM, throughput
	bash scripts/compose/run.sh scale

bigfile: install  ## stream a 1 GiB file up and down (local, then S3 via moto); server RSS growth < 64 MiB
	$(BIN)/python scripts/bigfile.py $(BIGFILE_ARGS)

faults: install  ## break PostgreSQL, Redis and S3 under load (own throwaway servers); 0 unexpected 5xx
	$(BIN)/python scripts/faults.py $(FAULTS_ARGS)

bench: install services  ## wrk vs a bare ceiling app: 1 then 2 workers, a typical and a heavy user (~30 min)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

profile: install services  ## where a list's (or, --create, a create's) CPU goes, by layer (py-spy under wrk; ~1 min)
	$(BIN)/python scripts/profile_api.py $(PROFILE_ARGS)

# `make load` defaults; override on the command line: make load USERS=50 DURATION=5m
BASE_URL   ?= http://127.0.0.1:8000
USERS      ?= 20
SPAWN_RATE ?= 5
DURATION   ?= 1m

load: install  ## locust, headless, against BASE_URL (a `make run` server): reports/load_*.csv + load.html
	@mkdir -p reports
	$(BIN)/locust -f load/locustfile.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
	  --host $(BASE_URL) --csv reports/load --html reports/load.html

lint: install  ## ruff (lint + format check), mypy, Redocly's recommended rules on the OpenAPI document
	$(BIN)/ruff check src tests migrations scripts load
	$(BIN)/ruff format --check src tests migrations scripts load
	$(BIN)/mypy
	$(BIN)/python scripts/lint_openapi.py

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests migrations scripts load
	$(BIN)/ruff format src tests migrations scripts load

lock:  ## re-resolve requirements*.lock from pyproject.toml (needs pip-tools in a scratch venv)
	@tmp=$$(mktemp -d) && $(PYTHON) -m venv $$tmp && $$tmp/bin/pip install --quiet pip-tools && \
	  $$tmp/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	    --no-emit-trusted-host -o requirements.lock pyproject.toml && \
	  $$tmp/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	    --no-emit-trusted-host --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml; \
	  rc=$$?; rm -rf $$tmp; exit $$rc

clean:  ## remove the virtualenv and caches (keeps var/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
