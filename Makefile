# WebSCADA Stream. `make run` brings everything up with simulated devices;
# `make test` runs lint, type checks and the whole test suite against the real
# local services (it starts them). See README.md.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: venv stack stack-down browser vendor lint test test-unit test-integration test-e2e run stop bench clean

venv: $(STAMP)

# pyproject.toml says which versions the project accepts, constraints.txt which it installs
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]" -c constraints.txt
	rm -f $(VENV)/.installed-*
	touch $@

stack: venv
	$(BIN)/webscada stack up

stack-down: venv
	$(BIN)/webscada stack down

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads one).
browser: venv
	test -x /usr/bin/chromium || $(BIN)/python -c "from infra.services._base import apt_install; apt_install('chromium')"

# The dashboard's front-end libraries from npm at the versions pinned in
# api/static/vendor/VERSIONS (socket.io-client, uPlot); needs npm, not run by other targets.
vendor:
	infra/vendor.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test-unit: venv
	$(BIN)/pytest tests/unit -q

test-integration: venv stack
	$(BIN)/pytest tests/integration -q

test-e2e: venv stack browser
	$(BIN)/pytest tests/e2e -q

test: venv lint stack browser
	$(BIN)/pytest -q

run: venv
	$(BIN)/webscada run

stop: venv
	$(BIN)/webscada stop

bench: venv stack
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
