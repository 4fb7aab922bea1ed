# Reproducible environments and common tasks.
#   make venv        both environments (.venv: Python 3.6 + CNTK; .venv-modern: python3, no CNTK)
#   make test        lint-imports (import layers), then pytest in both environments (PYTEST_ARGS="-k foo" passes arguments through;
#                    PYTEST_WORKERS=2 processes per pytest run by default, one test module per worker at a time)
#   make demo        examples/demo.py in .venv (DEMO_ARGS=--small for a short run)
#   make bench       bench/run_all.py in .venv: writes docs/performance.md (BENCH_ARGS=--quick;
#                    BENCH_ARGS="--only hvp --merge" reruns one benchmark and keeps the others)
#   make clean       remove both environments
# The setup scripts are idempotent: each keeps a stamp in its venv keyed on the
# hash of setup.cfg/setup.py/pyproject.toml and the scripts, so a second run is
# a no-op and a change to any of those files redoes the setup.

SHELL := /bin/bash
VENV36      := .venv
VENV_MODERN := .venv-modern
PYTEST_ARGS ?=
# pytest-xdist: the suite on both cores (each process uses one CPU thread: tests/conftest.py).
# --dist loadfile keeps a module's tests (and its module fixtures) in one process. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
PYTEST := -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile
DEMO_ARGS ?=
BENCH_ARGS ?=
# In .venv the CNTK tests must run: tests/conftest.py stops the session with a message naming what
# is broken (e.g. the OpenMPI shim) when CNTK does not import, instead of skipping them all.
REQUIRE_CNTK := INFLUENCE_REQUIRE_CNTK=1

.PHONY: venv venv36 venv-modern test test-modern test36 demo bench clean

venv: venv36 venv-modern

venv36:
	@scripts/setup-venv36.sh $(VENV36)

venv-modern:
	@scripts/setup-venv-modern.sh $(VENV_MODERN)

# Both pytest runs always happen; the target fails if either fails.
test: venv
	@rc=0; \
	echo "==> lint-imports in $(VENV_MODERN) (the layers of docs/architecture.md)"; \
	$(VENV_MODERN)/bin/lint-imports --no-cache || rc=$$?; \
	echo "==> pytest in $(VENV_MODERN) (no CNTK)"; \
	$(VENV_MODERN)/bin/python $(PYTEST) $(PYTEST_ARGS) || rc=$$?; \
	echo "==> pytest in $(VENV36) (Python 3.6 + CNTK)"; \
	$(REQUIRE_CNTK) $(VENV36)/bin/python $(PYTEST) $(PYTEST_ARGS) || rc=$$?; \
	exit $$rc

test-modern: venv-modern
	$(VENV_MODERN)/bin/python $(PYTEST) $(PYTEST_ARGS)

test36: venv36
	$(REQUIRE_CNTK) $(VENV36)/bin/python $(PYTEST) $(PYTEST_ARGS)

# The demo draws a PNG with matplotlib, which the .venv setup installs.
demo: venv36
	$(VENV36)/bin/python examples/demo.py $(DEMO_ARGS)

# Every bench/bench_*.py; writes docs/performance.md (BENCH_ARGS=--quick for a fast check).
bench: venv36
	$(VENV36)/bin/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV36) $(VENV_MODERN)
