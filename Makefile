# The README's commands. Everything runs from a local virtualenv that `make` creates on demand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test test-slow bench bench-metrics bench-scale lint migrate install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving needs the app and its database and broker drivers; tests, linters and benchmarks
# add the dev tools (pytest, ruff, mypy, playwright, langgraph-sdk, ...), which `make run` skips.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[postgres,redis]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[postgres,redis,dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/python manage.py migrate --no-input -v0

## run: the whole platform (API, admin, a worker) on SQLite with the ORM broker
run: migrate
	@$(BIN)/python manage.py bootstrap_demo
	PORT=$(PORT) WEBHOOK_ALLOW_PRIVATE=$${WEBHOOK_ALLOW_PRIVATE:-1} exec $(BIN)/python manage.py serve --host $${HOST:-127.0.0.1} --port $(PORT)

## test: the default test suite (no external services needed)
# A per-test cap turns a hang into one failed test with its stack, instead of a stuck CI run.
# pytest-xdist: one worker per CPU, at most 4 (each starts servers and clusters of its own);
# a test file stays on one worker, so a module's live server starts once. TEST_WORKERS=0: serial.
TEST_WORKERS ?= auto
test: install-dev
	$(BIN)/python -m pytest -m "not slow" --timeout 300 -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

## test-slow: fault and load tests (real processes killed, many jobs)
test-slow: install-dev
	$(BIN)/python -m pytest -m slow --timeout 900 $(PYTEST_ARGS)

## bench: throughput and latency figures against raw django-q2 on the same broker
bench: install-dev
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## bench-metrics: what a scrape of GET /metrics costs on 100,000 executions and 40 processes' counters
bench-metrics: install-dev
	$(BIN)/python bench/metrics_bench.py $(BENCH_ARGS)

## bench-scale: lists, searches and admin pages on a quarter's data set (PostgreSQL: DATABASE_URL)
SIZE ?= 1000000
bench-scale: install-dev
	$(BIN)/python bench/scale.py --size $(SIZE) $(BENCH_ARGS)

## lint: ruff (the rules in pyproject.toml) and mypy (the app packages); .pre-commit-config.yaml runs the same
lint: install-dev
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) var staticfiles
