# WebSCADA Stream. `make run` brings everything up with simulated devices;
# `make test` runs lint, type checks and the whole test suite against the real
# local services (it starts them). See README.md.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: venv stack stack-down lint test test-unit test-integration run stop bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

stack: venv
	$(BIN)/webscada stack up

stack-down: venv
	$(BIN)/webscada stack down

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test-unit: venv
	$(BIN)/pytest tests/unit -q

test-integration: venv stack
	$(BIN)/pytest tests/integration -q

test: venv lint stack
	$(BIN)/pytest -q

run: venv
	$(BIN)/webscada run

stop: venv
	$(BIN)/webscada stop

bench: venv stack
	$(BIN)/python -m bench.e2e_mqtt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
