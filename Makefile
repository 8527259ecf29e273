# Kapal: `make up` runs it here, `make test` tests it; both install what is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := $(foreach d,kapal gateway scheduler infra bench,$(if $(wildcard $(d)/*.py),$(d)))
# This host's pip warns about every configured index location it skips.
PIP_NOISE := grep -v 'is ignored' || true

.PHONY: help venv setup up down test lint fmt clean

help:
	@echo "make up      run Kapal here (Docker, base images, Postgres, gateway)"
	@echo "make test    lint, then run the tests (ARGS='-k name' passes arguments to pytest)"
	@echo "make setup   install/start Docker and build the base runtime images"
	@echo "make down    stop what an interrupted 'make up' left running"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make fmt     ruff format and fix"
	@echo "make clean   remove caches and build output (not .venv)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -e '.[dev]' 2>&1 | { $(PIP_NOISE); }
	@touch $(STAMP)

setup: venv
	$(VPY) -m infra setup

up: venv
	$(VPY) -m infra up

down: venv
	$(VPY) -m infra down

test: venv lint
	$(VPY) -m infra test $(ARGS)

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VPY) -m mypy $(PACKAGES)
	$(VPY) -m mypy --strict runtimes/python/kapal_runtime/*.py

fmt: venv
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
