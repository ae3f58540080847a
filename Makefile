# skipvit: `make serve` and `make test` set everything up from nothing and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := dataset-fashion-mnist
# test-only: headless Chromium for tests/service/test_web.py, promtool (from prometheus) for tests/test_monitoring.py
APT_DEV_PACKAGES := chromium chromium-driver prometheus
TORCH_SPEC := torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test lint setup setup-dev apt clean help upgrade lock k8s-token

help:
	@echo "make serve   set up and serve the default bundle on http://127.0.0.1:8000"
	@echo "make test    set up and run the linters and the test suite"

serve: setup
	$(BIN)/skipvit serve

test: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: setup-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

apt: $(VENV)/.stamp-apt
$(VENV)/.stamp-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.stamp-apt-dev: $(VENV)/.stamp-apt
	@missing=""; for p in $(APT_DEV_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages for the tests:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed"'
	$(PYTHON) -m venv $(VENV)

# Every package at the version in constraints.txt (the set the suite last passed with).
PIP_INSTALL := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt

# torch first and pinned, so that the range in pyproject.toml never pulls a CUDA build.
$(VENV)/.stamp-runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) $(TORCH_SPEC)
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.stamp-dev: pyproject.toml constraints.txt $(VENV)/.stamp-runtime
	$(PIP_INSTALL) -e '.[dev]'
	@touch $@

# checkov (tests/test_k8s.py) in a virtual environment of its own: it pins networkx<2.7 and
# packaging<24, below the versions that torch and the suite use in $(VENV).
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.stamp-install: constraints-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --disable-pip-version-check -c constraints-checkov.txt checkov
	@touch $@

# Newer versions: the newest releases within pyproject.toml's ranges (torch stays at
# TORCH_SPEC), then the suite; `make lock` then records them in constraints.txt.
upgrade: setup-dev
	$(BIN)/pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager $(TORCH_SPEC) -e '.[dev]'
	$(MAKE) test

lock:
	{ grep '^#' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	{ grep '^#' constraints-checkov.txt; $(CHECKOV_VENV)/bin/pip freeze; } > constraints-checkov.txt.new
	mv constraints-checkov.txt.new constraints-checkov.txt

setup: $(VENV)/.stamp-apt $(VENV)/.stamp-runtime
setup-dev: $(VENV)/.stamp-apt-dev $(VENV)/.stamp-dev $(CHECKOV_VENV)/.stamp-install

# The admin token of the Kubernetes deployment (deploy/k8s/kustomization.yaml reads it); written
# once, owner-only, and never committed (.gitignore).
k8s-token: deploy/k8s/admin-token.env
deploy/k8s/admin-token.env:
	umask 077 && echo "admin-token=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))')" > $@

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .ruff_cache
