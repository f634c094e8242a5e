# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both set up .venv on first use. Nothing here needs Vivado or a board.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-hw test-busy nightly clean

$(STAMP): pyproject.toml scripts/setup-system.sh
	bash scripts/setup-system.sh
	python3 -m venv $(VENV)
	@echo "[setup] pip, wheel, setuptools"
	$(PIP) install --progress-bar on --upgrade pip wheel setuptools
	# the CPU torch first: anything else makes pip fetch several GB of CUDA
	@echo "[setup] torch 2.13.0 (CPU build)"
	$(PIP) install --progress-bar on torch==2.13.0
	@echo "[setup] splitrack and its dependencies (TensorFlow, hls4ml, rule4ml, cocotb, ...: a few minutes)"
	$(PIP) install --progress-bar on -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/splitrack demo

# CI: everything but the full-size reference runs (marker `slow`), which `make nightly` adds.
# The sim tests run on two xdist workers, each test file on one worker (its tests share module fixtures:
# racks, plans); tests marked `serial` (pinned CPUs, tbf-shaped links, timings compared between two runs)
# run alone afterwards. pytest-timeout kills a hung test (the limit is in pyproject.toml).
XDIST ?= -n 2 --dist loadfile
test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not serial" $(XDIST) --durations=15 sim_tests
	$(VENV)/bin/python -m pytest -q -m "not slow and serial" --durations=5 sim_tests
	$(MAKE) test-hw

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
# before trusting a new test that involves time (see the README). Exits with the suite's status.
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
	rm -rf $(VENV) build   # the user cache stays: `splitrack cache clean` empties it
