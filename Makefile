# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both set up .venv on first use. Nothing here needs Vivado or a board.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-hw test-busy test-latest lock nightly docs clean

# The exact versions CI tests with are in requirements.lock (pip-compile, with hashes): setup installs
# exactly those, then splitrack itself without dependencies. `make lock` moves the lock forward on purpose;
# `make test-latest` runs the suite against the newest versions pyproject.toml's ranges allow.
LOCK := requirements.lock
$(STAMP): pyproject.toml $(LOCK) scripts/setup-system.sh
	bash scripts/setup-system.sh
	python3 -m venv $(VENV)
	@echo "[setup] pip"
	$(PIP) install --progress-bar on --upgrade pip
	@echo "[setup] the locked dependencies: TensorFlow, hls4ml, rule4ml, the CPU build of torch, cocotb, ... (a few minutes)"
	$(PIP) install --progress-bar on --require-hashes --no-deps -r $(LOCK)
	@echo "[setup] splitrack itself (editable)"
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/splitrack demo

# CI: everything but the full-size reference runs (marker `slow`), which `make nightly` adds: the sim tests
# on two xdist workers, the tests marked `serial` alone, then the hw tests on a fresh 5-board virtual rack.
# Every pass runs whatever the others do; their results are printed together at the end.
# pytest-timeout kills a hung test (the limit is in pyproject.toml).
test: setup
	bash scripts/run-tests.sh $(VENV)

# The documentation site (Sphinx, MyST Markdown): docs/ -> docs/_build/html/index.html. -W: every warning is an
# error, so a broken link or a page that no longer builds fails CI. The CLI reference is generated from the
# argparse parser (sphinx-argparse) and the API pages from the docstrings (autodoc), so they cannot drift.
docs: setup
	$(VENV)/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

# The suite against the newest versions pyproject.toml's ranges allow (a venv of its own), so that drift of
# a dependency is seen on purpose, not discovered by a newcomer. torch stays the CPU build.
LATEST := .venv-latest
test-latest:
	bash scripts/setup-system.sh
	rm -rf $(LATEST) && python3 -m venv $(LATEST)
	$(LATEST)/bin/pip install --progress-bar on --upgrade pip
	$(LATEST)/bin/pip install --progress-bar on torch==2.13.0
	$(LATEST)/bin/pip install --progress-bar on -e '.[test,docs]'
	@mkdir -p build && $(LATEST)/bin/pip freeze --all --exclude-editable > build/latest-freeze.txt
	@echo "[test-latest] versions that differ from requirements.lock:"
	@$(LATEST)/bin/python scripts/lock_diff.py $(LOCK) build/latest-freeze.txt
	touch $(LATEST)/.installed
	bash scripts/run-tests.sh $(LATEST)

# Move requirements.lock forward: the newest versions pyproject.toml allows (torch held back by
# scripts/lock-constraints.txt), with hashes. Review the diff, run `make test`, commit both.
lock:
	python3 -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip pip-tools
	build/lock-venv/bin/pip-compile --upgrade --extra test --extra docs --generate-hashes --allow-unsafe --strip-extras \
	  --constraint scripts/lock-constraints.txt -o $(LOCK) pyproject.toml

# The hardware tests on a fresh 5-board virtual rack, stopped again whatever the tests do. One worker: board
# leases would let xdist workers share the rack (a file lock per board), but most tests here deploy plans of
# 3 or 4 partitions, two of which do not fit on 5 boards: a second worker would mostly wait for boards (up to
# --board-lease-timeout, then fail) and run the session's health check of every board a second time.
HW_RACK := build/ci-rack.toml
test-hw: setup
	@mkdir -p build
	@$(VENV)/bin/splitrack rack down $(HW_RACK) >/dev/null 2>&1 || true
	@trap '$(VENV)/bin/splitrack rack down $(HW_RACK)' EXIT; \
	  $(VENV)/bin/splitrack rack up --n-boards 5 --out $(HW_RACK) && \
	  $(VENV)/bin/python -m pytest -q -m hw --boards $(HW_RACK) hw_tests

# The test suite with CPU-bound processes beside it (2 unless BURNERS=n), as on a busy CI runner: run it
# before trusting a new test that involves time (see docs/development.md). Exits with the suite's status.
BURNERS ?= 2
test-busy: setup
	bash scripts/cpu-burners.sh $(BURNERS) $(MAKE) test

# What a nightly cron job runs: the slow tests, then bench + history + regression check + dashboard on a
# fresh virtual rack (exit 1 on a regression). Results accumulate in results.sqlite, the page in site/.
NIGHTLY_RACK := build/nightly-rack.toml
nightly: setup
	$(VENV)/bin/python -m pytest -q -m slow --timeout 3600 sim_tests
	@mkdir -p build
	@$(VENV)/bin/splitrack rack down $(NIGHTLY_RACK) >/dev/null 2>&1 || true
	@trap '$(VENV)/bin/splitrack rack down $(NIGHTLY_RACK)' EXIT; \
	  $(VENV)/bin/splitrack rack up --n-boards 5 --out $(NIGHTLY_RACK) && \
	  $(VENV)/bin/splitrack nightly --boards $(NIGHTLY_RACK) --db results.sqlite -o site

clean:
	rm -rf $(VENV) $(LATEST) build docs/_build   # the user cache stays: `splitrack cache clean` empties it
