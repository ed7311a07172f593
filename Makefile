# tqflow: `make demo` runs the embedded pipeline, `make test` runs `make lint` and the tests.
# Both create .venv and install what they need on first use. `make bench` prints the
# side-by-side benchmarks (bench/README.md), `make reliability` the fault-injection figures
# (bench/RELIABILITY.md).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint bench reliability install clean

install: $(INSTALLED)

# The versions uv.lock pins, the ones the tests ran and the worker image installs: `--locked`
# fails (and installs nothing) when the lock and pyproject.toml disagree; `.venv/bin/uv lock`
# after changing a dependency. uv itself is pinned too: a lock is read by the uv that wrote it
# or a newer one. --inexact leaves pip and uv in the environment. --compile-bytecode:
# PYTHONDONTWRITEBYTECODE may be set (it is on these machines), and without .pyc files every
# process imports Prefect twice as slowly.
UV_VERSION := 0.13.9
$(INSTALLED): pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "tqflow needs Python >= 3.10"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(VENV)/bin/uv sync --quiet --locked --inexact \
		--extra test --compile-bytecode --python $(PY)
	@touch $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/tqflow demo

# Three test processes on 2 cores: at two, the CPU sat idle 29% of the run, waiting on servers and
# subprocesses; three took 20% less time (DESIGN.md, facts).
test: lint
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -q -n 3 --dist loadgroup

# ruff (lint and format) and mypy on everything.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(INSTALLED)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m bench.run

# The fault-injection scenarios at their stress sizes; figures go to bench/RELIABILITY.md.
reliability: $(INSTALLED)
	$(PY) -m bench.reliability --stress

clean:
	rm -rf $(VENV) tqflow-data .pytest_cache .hypothesis
