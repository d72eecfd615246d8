# One environment for the project, created once and reused (about 2.3 GB).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-integration bench deploy-tools lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Checkov pins an old `packaging` that breaks pytest 9, so it lives in its own venv.
deploy-tools:
	bash scripts/install_deploy_tools.sh

demo: setup
	$(PY) -m job demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check job tests bench
	$(VENV)/bin/ruff format --check job tests bench

format: setup
	$(VENV)/bin/ruff check --fix job tests bench
	$(VENV)/bin/ruff format job tests bench

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf runs .pytest_cache
