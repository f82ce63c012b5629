# Entrepot: development tasks.
#
#   make run     serve config/dev.yml (registry:2 format) on :5000, storing under ./data
#   make test    install test tools, then ruff, mypy, import-linter and the whole pytest suite
#                (two pytest-xdist workers: the end-to-end tests wait on real servers and clients
#                most of the time, so two of them overlap; TEST_WORKERS=0: one process)
#   make lint    only the static checks
#   make bench   Entrepot against registry:2, one table (python -m bench; BENCH_ARGS=--quick)
#   make soak    64 clients for 10 minutes through 2 workers, then a verdict (python -m bench.soak;
#                SOAK_ARGS="--clients 16 --duration 120"); a short run of it is in `make test`
#   make clean   remove the venv and caches (./data is kept)
#
# Override on the command line, e.g. `make test PYTEST_ARGS="-m e2e -x"` or `make run PYTHON=python3.12`.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= config/dev.yml
PYTEST_ARGS ?=
# Two workers: in one process the suite took 14.5 min on the idle 2-core machine, near CI's
# 15-minute budget. Tests of one group (tests/conftest.py: the session's Ceph and Redis users,
# each other end-to-end module) run on one worker; waits have generous deadlines.
# A worker that dies fails the run at once (--max-worker-restart=0): with --dist loadgroup,
# pytest-xdist 3.8 replaced one but the run then waited forever.
TEST_WORKERS ?= 2
BENCH_ARGS ?=
SOAK_ARGS ?=
PIP_FLAGS ?= --disable-pip-version-check -q

BIN := $(VENV)/bin
VENV_PY := $(BIN)/python
RUN_STAMP := $(VENV)/.stamp-install
TEST_STAMP := $(VENV)/.stamp-install-test

.PHONY: run test lint test-deps bench soak clean

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
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: test-deps lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --max-worker-restart=0 --durations=30 $(PYTEST_ARGS)

# The benchmark drives Debian's docker-registry with wrk, ab (HEAD), curl and taskset, and for
# its S3 rows Ceph's radosgw, redis-server and nginx (some in /usr/sbin): install the missing
# ones (as root), then run. `make bench BENCH_ARGS=--quick` is the smoke run.
BENCH_TOOLS := docker-registry:docker-registry wrk:wrk ab:apache2-utils curl:curl taskset:util-linux \
	radosgw:radosgw radosgw-admin:radosgw ceph-mon:ceph-mon monmaptool:ceph-mon ceph-osd:ceph-osd \
	ceph:ceph-common redis-server:redis-server nginx:nginx

bench: $(TEST_STAMP)
	@missing=""; for pair in $(BENCH_TOOLS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%:*}" >/dev/null 2>&1 \
			|| missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "bench: missing Debian packages:$$missing" >&2; exit 1; \
		fi; \
	fi
	$(VENV_PY) -m bench $(BENCH_ARGS)

# The soak's upstream is Debian's docker-registry: install it when missing (as root), then run.
soak: $(TEST_STAMP)
	@if ! command -v docker-registry >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-registry; \
		else \
			echo "soak: missing Debian package: docker-registry" >&2; exit 1; \
		fi; \
	fi
	$(VENV_PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
