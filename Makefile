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
# Python keeps each module's compiled bytecode in .venv and reads it back in every later process. A host
# that sets PYTHONDONTWRITEBYTECODE (the machines this project is developed on do) makes every process
# compile Prefect and its dependencies again, ~40% of an import's CPU: each flow run a worker starts,
# each server, each test process. Empty means unset to Python.
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup test test-fast test-dates faketime lint demo sandbox bench bench-flow bench-people bench-destinations server deploy worker run status postgres postgres-stop browser clean

# one bootstrap at a time: `make server` and `make sandbox` started together on a fresh clone would
# otherwise both create .tools/ and one would run a half-installed uv
setup:
	@mkdir -p $(TOOLS)
	@flock $(TOOLS)/.setup.lock $(MAKE) -s --no-print-directory EXTRAS="$(EXTRAS)" DEV="$(DEV)" $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# the destinations' integrations to add (pyproject's extras): none by default (the local folder and
# DuckDB need none), some of `s3 gcs bigquery azure snowflake delta iceberg`, or `all`, e.g.
# `make setup EXTRAS="s3"`. A sync only adds (--inexact): what a running worker imports never vanishes
# under it; `make clean` starts over. The tests and bench-destinations use every destination, the
# demo the table format of its FORMAT.
EXTRAS ?=
test test-fast lint bench-destinations: EXTRAS = all
demo: EXTRAS += $(filter delta iceberg,$(FORMAT))
EXTRA_FLAGS := $(foreach extra,$(EXTRAS),--extra $(extra))
# the dev group (pytest, linters, the local stand-ins of the clouds: ~170 packages) only for the targets
# that test or measure, or `make setup DEV=1`: what runs the product (server, worker, deploy, demo,
# sandbox) gets the locked dependencies and its extras alone. A sync without it after one with it
# removes nothing (--inexact), so a test running from the same .venv keeps its tools.
DEV ?=
test test-fast lint test-dates bench bench-flow bench-people bench-destinations: DEV = 1
GROUP_FLAGS := $(if $(DEV),--group dev,--no-dev)
EXTRAS_STAMP := $(TOOLS)/.extras-$(subst $() ,-,$(or $(strip $(EXTRAS)),none))$(if $(DEV),+dev)

$(VENV)/.synced: pyproject.toml uv.lock $(EXTRAS_STAMP) | $(UV)
	$(UV) sync --frozen --inexact --python $(PYTHON) $(GROUP_FLAGS) $(EXTRA_FLAGS)
	touch $@

# a stamp per choice of extras and dev group: choosing others syncs again
$(EXTRAS_STAMP):
	@mkdir -p $(TOOLS)
	@rm -f $(TOOLS)/.extras-*
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# pytest-xdist: most tests wait on loopback servers and subprocesses, so 4 workers beat 2 on the 2-core CI
# machine; `--dist loadgroup` keeps the tests of one long-starting server on one worker (XDIST_GROUPS in
# tests/conftest.py). `make test PYTEST_ARGS=` runs the suite in one process.
PYTEST_ARGS ?= -n 4 --dist loadgroup --durations=10

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# the unit tests alone (tests/unit/: no server, no subprocess, no sandbox), in one process: seconds. The
# other folders are tests/destinations, flows, ops, sandbox and emulators (what the local stand-ins of
# the clouds do, marked `emulator`); `make test` runs them all.
test-fast: setup
	$(BIN)/pytest tests/unit -q -n 0

# the tests that take their days from the calendar, as if today were each of DAYS dates from START
# (default: the 30 days up to today), under libfaketime; `make test-dates DAYS=1 START=2025-12-31`
# tries one date
DAYS ?= 30
START ?=
test-dates: EXTRAS = all
test-dates: setup faketime
	$(BIN)/python -m tests.dates --days $(DAYS) $(if $(START),--start $(START))

# Debian's libfaketime, for make test-dates
faketime:
	@command -v faketime >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq faketime; }

# FORMAT=delta or FORMAT=iceberg writes those tables instead of the DuckDB warehouse
FORMAT ?= duckdb
# the demo's temporary Prefect server registers no block type at start (the demo saves none): ~9 s less
demo: export PREFECT_API_BLOCKS_REGISTER_ON_START := false
demo: export PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION := false
demo: setup
	FORMAT=$(FORMAT) $(BIN)/python -m flows.demo

sandbox: setup
	$(BIN)/python -m sandbox --host 127.0.0.1 --port 8765

bench: setup
	$(BIN)/python -m bench.events

# the real events flow with a Prefect server in its own process: 1, 3 and 7 days per request
bench-flow: setup
	$(BIN)/python -m bench.flow

bench-people: setup
	$(BIN)/python -m bench.people

bench-destinations: setup
	$(BIN)/python -m bench.destinations

# --- operations: a local Prefect server, the deployments of prefect.yaml, a worker ------------------
PREFECT_PORT ?= 4200
# the server deploy and worker talk to: PREFECT_API_URL if set (e.g. Prefect Cloud), else `make server`.
# Expanded once (:=), so that exporting PREFECT_API_URL from it below cannot refer to itself.
PREFECT_SERVER_URL := $(or $(PREFECT_SERVER_URL),$(PREFECT_API_URL),http://127.0.0.1:$(PREFECT_PORT)/api)
SANDBOX_URL ?= http://127.0.0.1:8765
DATA_DIR ?= data
POOL ?= mixpanel
deploy worker run status: export PREFECT_API_URL := $(PREFECT_SERVER_URL)

# DB=postgres: on the PostgreSQL of `make postgres` (its URL read from $(PG_DIR)/url, never printed);
# else on PREFECT_API_DATABASE_CONNECTION_URL if set, else SQLite under ~/.prefect
DB ?= sqlite
PG_DIR ?= $(DATA_DIR)/postgres
server: setup
	@$(if $(filter postgres,$(DB)),test -f $(PG_DIR)/url || { echo "make server DB=postgres: no PostgreSQL in $(PG_DIR): run make postgres first." >&2; exit 1; })
	$(if $(filter postgres,$(DB)),PREFECT_API_DATABASE_CONNECTION_URL="$$(cat $(PG_DIR)/url)") \
	  PREFECT_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api PREFECT_API_DATABASE_TIMEOUT=60 \
	  $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# a PostgreSQL cluster of its own in $(PG_DIR), on a free loopback port, with the database `prefect`
# (started again if it exists); as root it runs as the user `postgres` (ops/postgres.sh)
postgres:
	ops/postgres.sh start $(PG_DIR)

postgres-stop:
	ops/postgres.sh stop $(PG_DIR)

# the work pool (if absent), every block type, the rate-budget limits, the crashed-runs automations, the
# alerts if NOTIFY names a notification block (docs/alerts.md), the blocks prefect.yaml names (sandbox
# credentials and ./data, only if no blocks of those names exist), every deployment of prefect.yaml,
# then its block references pinned by id (what the UI's pickers show)
NOTIFY ?=
deploy: setup
	$(BIN)/python -m flows.setup --pool $(POOL) --sandbox $(SANDBOX_URL) --data $(DATA_DIR) $(if $(NOTIFY),--notify '$(NOTIFY)')
	$(BIN)/prefect --no-prompt deploy --all
	$(BIN)/python -m flows.setup --pin-blocks

worker: setup
	$(BIN)/prefect worker start --pool $(POOL) --type process

# one run of a deployment, followed in the terminal: its own log lines (rows per day), then its end state
# and, if it failed, why (exit 1); e.g. `make run DEPLOYMENT=mixpanel-backfill/backfill PARAMS='from_date=2026-11-01'`
DEPLOYMENT ?=
PARAMS ?=
run: setup
	$(BIN)/python -m flows.run $(DEPLOYMENT) $(PARAMS)

# the sync status of the local folder $(DATA_DIR) (or of BLOCK=<block type slug>/<name>, loaded from the
# server) as a terminal table: Mixpanel's counts refreshed when the server and Mixpanel answer, else the ones
# each day recorded; exit 0 only when every day is in sync. VERIFY=1 re-reads every committed file;
# OFFLINE=1 asks neither the server nor Mixpanel (a folder of another project, such as the demo's).
BLOCK ?=
PROJECT ?=
STATUS_DAYS ?= 90
VERIFY ?=
OFFLINE ?=
status: setup
	$(BIN)/python -m flows.status_terminal --data $(DATA_DIR) --days $(STATUS_DAYS) $(if $(BLOCK),--block $(BLOCK)) \
	  $(if $(PROJECT),--project $(PROJECT)) $(if $(VERIFY),--verify) $(if $(OFFLINE),--offline)

# Debian's Chromium for the UI test (tests/ops/test_ui.py); Playwright drives it, no browser download
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium; }

# a PostgreSQL of `make postgres` is stopped first: its files go with data/
clean:
	-@ops/postgres.sh stop $(PG_DIR) 2>/dev/null
	rm -rf $(VENV) $(TOOLS) data bench/out
