# sessionsync: the two commands a new user needs are `make run` and `make test`.
# Both install what they need (virtualenvs, LocalStack) and start services.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP_QUIET := -q --disable-pip-version-check

.PHONY: run test unit chaos mutants perfdoc-check venv services localstack bootstrap lint ruff typecheck bench clean stop

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) -r requirements-dev.txt -e . 2> >(grep -v '^WARNING: Location' >&2)
	touch $@

venv: $(BIN)/.installed

services:
	scripts/services.sh

localstack:
	scripts/localstack.sh

# Queues, DLQ, database and migrations for the local stage (idempotent).
bootstrap: venv services localstack
	$(BIN)/sessionsync bootstrap

# Serve the API on http://127.0.0.1:8000 with the SQS worker and the relay.
run: bootstrap
	$(BIN)/sessionsync serve

# Ruff and mypy first (before any service starts), then the whole test
# suite against real Redis, a local Redis Cluster, PostgreSQL and
# LocalStack.  CI runs exactly this.
test: lint services localstack
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier alone, in seconds, with no services: tests/unit does no I/O
# (its conftest fails a test that opens a network connection).
unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The fault-injection suite alone (also part of `make test`): docs/guarantees.md.
chaos: venv services localstack
	$(BIN)/python -m pytest -m chaos $(PYTEST_ARGS)

# Named mutants: each breaks one guarantee on purpose in a scratch copy of the
# tree, and its tests must catch it (docs/guarantees.md, "Mutants").
# MUTANTS_ARGS="--only NAME" runs one; "--list" lists them.
mutants: venv services
	$(BIN)/python -m tests.mutants $(MUTANTS_ARGS)

# Whether docs/performance.* were measured at the code they describe.  Not in
# `make test`: the figures are regenerated once the code has landed.
perfdoc-check:
	python3 scripts/perfdoc_check.py

# The static checks `make test` starts with.
lint: ruff typecheck

ruff: venv
	$(BIN)/ruff check app.py chalicelib sessionsync tests scripts

# mypy over app.py, chalicelib and sessionsync ([tool.mypy] in pyproject.toml).
typecheck: venv
	$(BIN)/mypy

bench: bootstrap
	$(BIN)/sessionsync bench

stop:
	scripts/localstack.sh stop

clean: stop
	rm -rf $(VENV) .localstack-venv .run
