# classforge developer entry points. `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
GEN_DIR := gen/python

.PHONY: help demo venv protos lint test test-unit test-faults test-integration test-compose images infra-up infra-down infra-status bench lock clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

venv: $(STAMP) ## create .venv and install the locked dependencies

protos: $(STAMP) ## generate Python code from protos/ into gen/python (never edit it by hand)
	$(PY) -m services.common.protogen --out $(GEN_DIR)

lint: $(STAMP) ## buf lint the protos, ruff the Python and check the import contracts (pyproject.toml)
	deploy/local/buf.sh lint protos
	$(VENV)/bin/ruff check services tests bench
	PYTHONPATH=. $(VENV)/bin/lint-imports --no-cache  # PYTHONPATH: this tree, not where an editable install points

infra-up: ## install (once, cached) and start Kafka, MinIO and Prometheus on 127.0.0.1
	deploy/local/infra.sh up

infra-down: ## stop the local infrastructure
	deploy/local/infra.sh down

infra-status: ## show whether each local component is up
	deploy/local/infra.sh status

test-unit: protos ## unit tests only (no infrastructure)
	$(PY) -m pytest -m "not integration" tests

test-faults: protos ## the fault suite alone (tests/faults) against real Kafka, MinIO and Prometheus
	deploy/local/infra.sh up
	rc=0; $(PY) -m pytest tests/faults || rc=$$?; deploy/local/infra.sh down || true; exit $$rc

# Starts the real infrastructure, runs every test (the fault suite included), and stops it again even
# when tests fail; then the containerized stack in a real Docker engine (test-compose).
test: protos ## unit, integration and fault tests against real Kafka, MinIO and Prometheus, then test-compose
	deploy/local/infra.sh up
	rc=0; $(PY) -m pytest tests --ignore=tests/compose || rc=$$?; deploy/local/infra.sh down || true; exit $$rc
	$(MAKE) test-compose

images: $(STAMP) ## one image per service + the local infrastructure images, with no registry (deploy/docker)
	deploy/docker/images.sh
	deploy/docker/infra.sh

test-compose: protos ## the whole stack in Docker (engine installed/started if missing): a job, a Classify, Prometheus up
	deploy/compose/test-stack.sh

demo: protos ## the whole pipeline, embedded, on Fashion-MNIST (installs the Debian dataset if missing)
	@test -d /usr/share/datasets/fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m services.demo

bench: protos ## run the benchmarks under bench/ and print one table
	$(PY) -m bench

lock: ## re-resolve requirements.lock from pyproject.toml in a scratch venv
	rm -rf .lock-venv && $(PYTHON_BASE) -m venv .lock-venv
	.lock-venv/bin/pip install -q '.[dev]'
	{ head -2 requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^classforge'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

clean: ## remove the venv and local infrastructure state
	rm -rf $(VENV) .infra

# Compose stack: make up / up-gpu / down / down-volumes / compose-ps / compose-logs
-include deploy/compose.mk
