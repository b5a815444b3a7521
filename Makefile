# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := -p shardflow -p loadtests -m examples.typed
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: run test install install-runtime lint typecheck pytest bench screenshots clean

run: install-runtime
	$(BIN)/shardflow dev --shards 3 --app examples.bench --app examples.orders --demo 3000

test: install lint typecheck pytest

# `make run`: the runtime and Postgres only. `make test`: every extra and the servers
# the tests start (Prometheus, haproxy, RabbitMQ; Citus when its installer is beside us).
install-runtime: $(RUNTIME_STAMP)
	@bash scripts/install-system.sh $(VENV) runtime

install: $(STAMP)
	@bash scripts/install-system.sh $(VENV) all

$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP) $(RUNTIME_STAMP)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck:
	$(BIN)/mypy $(PACKAGES)

# Then the sagas and retries again with every shard a distributed schema of the session's
# Citus cluster (tests/citus_fixtures.py; skipped without Citus, required in CI).
pytest:
	$(BIN)/pytest -q
	SHARDFLOW_TEST_CITUS=1 $(BIN)/pytest -q tests/test_saga.py tests/test_retry.py

# The console's screenshots in docs/ui/ (docs/ui.md shows them), from its browser test.
screenshots: install
	SHARDFLOW_SCREENSHOTS=$(CURDIR)/docs/ui $(BIN)/pytest -q tests/test_console.py

bench: install
	$(BIN)/python -m loadtests.bench engine --seconds 20

clean:
	rm -rf $(VENV) .shardflow .mypy_cache .ruff_cache .pytest_cache
