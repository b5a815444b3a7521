# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := -p shardflow -p loadtests
STAMP := $(VENV)/.installed

.PHONY: run test install lint typecheck pytest bench clean

run: install
	$(BIN)/shardflow dev --shards 3 --app examples.bench --app examples.orders --demo 3000

test: install lint typecheck pytest

install: $(STAMP)
	@bash scripts/install-system.sh $(VENV)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy $(PACKAGES)

pytest:
	$(BIN)/pytest -q

bench: install
	$(BIN)/shardflow bench engine --seconds 20

clean:
	rm -rf $(VENV) .shardflow .mypy_cache .ruff_cache .pytest_cache
