# Two commands for a newcomer: `make run` and `make test`. Both set up ./.venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint typecheck unit integration bench clean

setup: $(STAMP)

# Re-run whenever pyproject.toml changes: the stamp is older than it.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	@VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: setup
	@./scripts/run.sh

# lint-imports checks the layers of DESIGN.md ([tool.importlinter] in pyproject.toml); --no-cache: no
# cache dir in the tree, and a run takes well under a second.
lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports --no-cache

typecheck: setup
	$(BIN)/mypy

# pytest-xdist: integration tests mostly wait on the processes they start, so more workers than the
# 2 cores of a developer's machine pay off; --dist loadfile keeps a module (and its module-scoped
# server) on one worker. PYTHONDONTWRITEBYTECODE= lets pytest itself cache bytecode too (see
# tests/conftest.py: bytecode_cache).
PYTEST_WORKERS ?= 4
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

unit: setup
	$(PYTEST) tests/unit

integration: setup
	$(PYTEST) tests/integration

test: setup lint typecheck
	$(PYTEST) tests

bench: setup
	$(BIN)/python benchmarks/http_invoke.py
	$(BIN)/python benchmarks/deploy.py
	$(BIN)/python benchmarks/api.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
