# Everything a newcomer needs, from a machine with only Python 3.11+, git and make.
#   make run    set up, then run the main job on the embedded SQLite database
#   make test   set up, then run the whole test suite on every configured backend
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup run test lint typecheck check clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --python "$$(command -v $(PYTHON))"
	touch $@

setup: $(VENV)/.synced

run: setup
	$(VENV)/bin/usageledger simulate

test: setup
	$(VENV)/bin/pytest -n 2

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
