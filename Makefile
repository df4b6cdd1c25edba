# Every target bootstraps what it needs from nothing but python3: uv goes into .tools/, the
# project and its locked dependencies into .venv/ (uv.lock), so a fresh clone needs no setup.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin

export UV_PYTHON_DOWNLOADS := never
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup test lint demo sandbox bench bench-people bench-destinations clean

setup: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

demo: setup
	$(BIN)/python -m flows.demo

sandbox: setup
	$(BIN)/python -m sandbox --host 127.0.0.1 --port 8765

bench: setup
	$(BIN)/python -m bench.events

bench-people: setup
	$(BIN)/python -m bench.people

bench-destinations: setup
	$(BIN)/python -m bench.destinations

clean:
	rm -rf $(VENV) $(TOOLS) data bench/out
