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

# uv installs in ~70 s what pip takes ~160 s for. --compile-bytecode: PYTHONDONTWRITEBYTECODE may be
# set (it is on these machines), and without .pyc files every process imports Prefect twice as slowly.
$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "tqflow needs Python >= 3.10"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode -e '.[test]'
	@touch $(INSTALLED)

demo: $(INSTALLED)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/tqflow demo

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
