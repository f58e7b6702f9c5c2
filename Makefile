# sessionsync: the two commands a new user needs are `make run` and `make test`.
# Both install what they need (virtualenvs, LocalStack) and start services.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP_QUIET := -q --disable-pip-version-check

.PHONY: run test unit chaos model mutants perfdoc perfdoc-check capacity capacity-check venv services localstack bootstrap lint ruff typecheck bench clean stop deploy deploy-check package policy node lambda-wheels

# The project and, for its tests, clients/python (a package of its own) editable.
$(BIN)/.installed: requirements.txt requirements-dev.txt infra/lambda/runtime-provided.txt pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) -r requirements-dev.txt -e '.[cli,bench,dev]' -e ./clients/python 2> >(grep -v '^WARNING: Location' >&2)
	touch $@

venv: $(BIN)/.installed

# clients/typescript's dev dependencies, exactly as package-lock.json pins them.
TS_CLIENT := clients/typescript
$(TS_CLIENT)/node_modules/.installed: $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node: $(TS_CLIENT)/node_modules/.installed

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
# LocalStack, the client libraries' suites included (tests/clients drives
# clients/typescript's `npm test`).  CI runs exactly this.
# Three pytest-xdist workers, a test file each at a time (module fixtures
# stay shared): most tests wait on servers, not on the CPU, so three beat
# two on this 2-core machine; each worker flushes a Redis database of its
# own (tests/support/constants.py).  PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 3
test: lint node services localstack policy lambda-wheels
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The unit tier alone, in seconds, with no services: tests/unit does no I/O
# (its conftest fails a test that opens a network connection).
unit: venv lambda-wheels
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The fault-injection suite alone (also part of `make test`): docs/guarantees.md.
chaos: venv services localstack
	$(BIN)/python -m pytest -m chaos $(PYTEST_ARGS)

# The model test alone with a long budget (docs/guarantees.md, "The model"):
# MODEL_EXAMPLES examples (default 200) of new random steps each run, on the
# single Redis endpoint and on a Redis Cluster (MODEL_REDIS=single or
# MODEL_REDIS=cluster: that one alone; `make test` runs 8 and 3 fixed ones);
# MODEL_RANDOM=0: the fixed examples of `make test`; MODEL_PROMISES=a,b
# judges only those promises (how fast each is found); a failure is shrunk
# (replayed on the real servers: minutes).
MODEL_EXAMPLES ?= 200
MODEL_RANDOM ?= 1
MODEL_REDIS ?= single cluster
MODEL_FILES = $(if $(filter single,$(MODEL_REDIS)),tests/model/test_model.py) \
              $(if $(filter cluster,$(MODEL_REDIS)),tests/model/test_model_cluster.py)
model: venv services localstack
	MODEL_EXAMPLES=$(MODEL_EXAMPLES) MODEL_CLUSTER_EXAMPLES=$(MODEL_EXAMPLES) MODEL_RANDOM=$(MODEL_RANDOM) MODEL_SHRINK=1 \
	  $(BIN)/python -m pytest -m model -s $(MODEL_FILES) $(PYTEST_ARGS)

# Named mutants: each breaks one guarantee on purpose in a scratch copy of the
# tree, and its tests must catch it (docs/guarantees.md, "Mutants").
# MUTANTS_ARGS="--only NAME" runs one; "--list" lists them.
mutants: venv services lambda-wheels
	$(BIN)/python -m tests.mutants $(MUTANTS_ARGS)

# Whether docs/performance.* were measured at the code they describe.  Not in
# `make test`: the figures are regenerated once the code has landed.
# docs/performance.md from docs/performance.template.md and docs/performance.json
# (after a bench: python3 scripts/perfdoc_render.py --json bench-results/<run>.json).
perfdoc:
	python3 scripts/perfdoc_render.py

perfdoc-check:
	python3 scripts/perfdoc_check.py

# docs/capacity.md from docs/capacity.json (after a bench:
# python3 scripts/capacity_render.py --json bench-results/<run>.json).
capacity:
	python3 scripts/capacity_render.py

capacity-check:
	python3 scripts/capacity_render.py --check

# The static checks `make test` starts with.
lint: ruff typecheck

ruff: venv
	$(BIN)/ruff check app.py chalicelib sessionsync tests scripts clients/python

# mypy over app.py, chalicelib, sessionsync and the Python client ([tool.mypy] in pyproject.toml).
typecheck: venv
	$(BIN)/mypy

# Each Lambda runtime's build of the binary wheels (hiredis, psycopg-binary)
# at the pinned versions, for the platforms that runtime loads, downloaded
# once into .lambda-wheels/: the tests and the bench build the package
# offline from them (scripts/deploy_stage.py, "the Lambda runtime").
LAMBDA_WHEELS_STAMP := .lambda-wheels/.fetched
$(LAMBDA_WHEELS_STAMP): requirements.txt infra/chalice-merge.json | venv
	$(BIN)/python scripts/deploy_stage.py wheels
	touch $@

lambda-wheels: $(LAMBDA_WHEELS_STAMP)

# checkov's own virtualenv (scripts/policy.sh): the deploy tests scan the templates with it.
policy:
	scripts/policy.sh install

bench: bootstrap lambda-wheels
	$(BIN)/sessionsync bench

stop:
	scripts/localstack.sh stop

# A stage's deploy (docs/deploy.md).  Its parameters live in
# infra/stages/$(STAGE).toml; `deploy-check` checks them against the
# template's parameters and Rules with the standard library only, before
# anything is built or installed, and names what is missing or malformed.
#   make deploy STAGE=dev               package, upload, show the change set, execute it
#   make deploy STAGE=dev DRY_RUN=1     the same, stopping once the change set is shown
#   make package STAGE=dev              build, without uploading, what deploy uploads:
#                                       .deploy/dev/out/ (sam.json, deployment.zip, stacks/)
# Never `chalice deploy`: it ignores infra/chalice-merge.json (no network,
# cache, database, queues, roles, alarms or migrations).  The package carries
# the CA bundle that verifies RDS (its global bundle) and RDS Proxy (Amazon
# Root CA 1, ACM's): fetched here, or copied from CA_BUNDLE=path.
RDS_CA_BUNDLE := chalicelib/adapters/postgres/rds-ca-bundle.pem
RDS_CA_BUNDLE_URL := https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
AMAZON_ROOT_CA_URL := https://www.amazontrust.com/repository/AmazonRootCA1.pem

deploy-check:
	@test -n "$(STAGE)" || { echo "make $(or $(MAKECMDGOALS),deploy) needs STAGE=<a file of infra/stages/>" >&2; exit 2; }
	@python3 scripts/deploy_stage.py check $(STAGE)

package: deploy-check venv
ifdef CA_BUNDLE
	cp $(CA_BUNDLE) $(RDS_CA_BUNDLE)
else
	{ curl -fsS --retry 3 $(RDS_CA_BUNDLE_URL) && curl -fsS --retry 3 $(AMAZON_ROOT_CA_URL); } > $(RDS_CA_BUNDLE).tmp
	mv $(RDS_CA_BUNDLE).tmp $(RDS_CA_BUNDLE)
endif
	$(BIN)/python scripts/deploy_stage.py package $(STAGE)

deploy: package
	$(BIN)/python scripts/deploy_stage.py deploy $(STAGE) $(if $(DRY_RUN),--dry-run)

clean: stop
	rm -rf $(VENV) .localstack-venv .run $(TS_CLIENT)/node_modules $(TS_CLIENT)/dist $(TS_CLIENT)/build
