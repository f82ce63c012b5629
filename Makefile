# Entrepot: development tasks.
#
#   make run     serve config/dev.yml (registry:2 format) on :5000, storing under ./data
#   make test    install test tools, then ruff, mypy, import-linter and the whole pytest suite
#   make lint    only the static checks
#   make bench   the benchmarks (python -m bench), once bench/ exists
#   make clean   remove the venv and caches (./data is kept)
#
# Override on the command line, e.g. `make test PYTEST_ARGS="-m e2e -x"` or `make run PYTHON=python3.12`.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= config/dev.yml
PYTEST_ARGS ?=
PIP_FLAGS ?= --disable-pip-version-check -q

BIN := $(VENV)/bin
VENV_PY := $(BIN)/python
RUN_STAMP := $(VENV)/.stamp-install
TEST_STAMP := $(VENV)/.stamp-install-test

.PHONY: run test lint test-deps bench clean

$(VENV_PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes (dependencies, entry points); the package itself is an
# editable install, so source edits need nothing.
$(RUN_STAMP): pyproject.toml | $(VENV_PY)
	$(VENV_PY) -m pip install $(PIP_FLAGS) -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(VENV_PY)
	$(VENV_PY) -m pip install $(PIP_FLAGS) -e '.[test]'
	touch $@

run: $(RUN_STAMP)
	$(BIN)/entrepot serve $(CONFIG)

test-deps:
	bash scripts/install-test-deps.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: test-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	@if [ -d bench ]; then \
		$(VENV_PY) -m bench; \
	else \
		echo "bench: no bench/ package yet"; \
	fi

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
