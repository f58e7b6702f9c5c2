# sessionsync: the two commands a new user needs are `make run` and `make test`.
# Both install what they need (virtualenvs, LocalStack) and start services.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP_QUIET := -q --disable-pip-version-check

.PHONY: run test unit chaos mutants perfdoc perfdoc-check capacity capacity-check venv node services localstack bootstrap lint ruff typecheck bench clean stop deploy

# The project and, for its tests, clients/python (a package of its own) editable.
$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml clients/python/pyproject.toml
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
test: lint node services localstack
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

bench: bootstrap
	$(BIN)/sessionsync bench

stop:
	scripts/localstack.sh stop

# Package a stage with the merge template and deploy it with CloudFormation
# (infra/README.md).  Never `chalice deploy`: it ignores infra/chalice-merge.json
# (no queues, no secrets wiring, no event source settings).
#   make deploy STAGE=prod REGION=eu-west-1 BUCKET=my-artifacts \
#        PARAMETERS="RedisEndpoint=... DbSecretArn=... ApiKeysSecretArn=..."
# `make -n deploy ...` prints the commands without running them.  The
# package is built afresh (chalice silently reuses a cached one) and the
# deploy stops when chalice could not find a wheel for Lambda's platform
# (it only warns, and the function would fail at import time).
REGION ?= $(or $(AWS_REGION),$(AWS_DEFAULT_REGION))
DEPLOY_DIR = .deploy/$(STAGE)
STACK ?= sessionsync-$(STAGE)
RDS_CA_BUNDLE := chalicelib/adapters/postgres/rds-ca-bundle.pem
RDS_CA_BUNDLE_URL := https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
ifneq ($(filter deploy,$(MAKECMDGOALS)),)
ifeq ($(filter dev prod,$(STAGE)),)
$(error make deploy needs STAGE=dev or STAGE=prod (the local stage points at LocalStack))
endif
ifeq ($(REGION),)
$(error make deploy needs REGION=... (or AWS_REGION): chalice package needs one)
endif
ifeq ($(BUCKET),)
$(error make deploy needs BUCKET=...: the S3 bucket aws cloudformation package uploads the code to)
endif
endif
deploy:
	curl -fsS --retry 3 -o $(RDS_CA_BUNDLE) $(RDS_CA_BUNDLE_URL)
	rm -rf .chalice/deployments $(DEPLOY_DIR) && mkdir -p $(DEPLOY_DIR)
	set -o pipefail; AWS_DEFAULT_REGION=$(REGION) $(BIN)/chalice package --stage $(STAGE) --merge-template infra/chalice-merge.json $(DEPLOY_DIR)/out 2>&1 | tee $(DEPLOY_DIR)/package.log
	! grep -q "Could not install dependencies" $(DEPLOY_DIR)/package.log
	aws cloudformation package --region $(REGION) --template-file $(DEPLOY_DIR)/out/sam.json --s3-bucket $(BUCKET) --output-template-file $(DEPLOY_DIR)/packaged.yaml
	aws cloudformation deploy --region $(REGION) --template-file $(DEPLOY_DIR)/packaged.yaml --stack-name $(STACK) --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset --parameter-overrides $(PARAMETERS)

clean: stop
	rm -rf $(VENV) .localstack-venv .run $(TS_CLIENT)/node_modules $(TS_CLIENT)/dist $(TS_CLIENT)/build
