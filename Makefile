# noblink: every target sets itself up. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-ring bench-feed bench-reload bench-wakeup sim inspect clean soak test-dashboard chaos chaos-soak

# (Re)create the venv when it is missing or older than pyproject.toml.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "noblink needs Python >= 3.11 (PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install your distribution's python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The sim at 10x by default: a 5-minute window in 30 s, watchable (ARGS="--speed 1" for real time).
run: $(STAMP)
	$(VENV)/bin/noblink run --speed 10 $(ARGS)

sim: $(STAMP)
	$(VENV)/bin/noblink sim --speed 60 $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# Mission Control in headless chromium (Debian's chromium + chromium-driver; `.ci/run` installs
# them): screenshot in test-output/dashboard.png.
test-dashboard: $(STAMP)
	$(PY) -m pytest -q tests/api_worker/test_dashboard.py $(ARGS)

soak: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

inspect: $(STAMP)
	$(PY) scripts/inspect_memory.py $(ARGS)

bench-ring: $(STAMP)
	$(PY) -m bench.ring

bench-feed: $(STAMP)
	$(PY) -m feed_worker.bench

# bench-reload also measures the wake-up floor (bench/wakeup.py) in the same run.
bench-reload: $(STAMP)
	$(PY) -m bench.reload

bench-wakeup: $(STAMP)
	$(PY) -m bench.wakeup

# Every benchmark in one run (ring, feed, reload + wake-up, and the alternatives to a hot reload:
# cold restart, strategy restart, in-process importlib.reload; reaction, tick, footprint):
# bench/results/latest.json with stable keys, a table with the targets (docs/benchmarks.md).
bench: $(STAMP)
	$(PY) -m bench.run_all $(ARGS)

# kill -9, sim faults, broken strategies and hostile input against a real bot (chaos/,
# docs/chaos.md): a table, bench/results/chaos.json, non-zero on any loss or failed check.
# ARGS="--only strategy-kill --runs 3" for a short one.
chaos: $(STAMP)
	$(PY) -m chaos $(ARGS)

# ten minutes of trading at 60x with a reload every 30 s; RSS, fds and /dev/shm growth
chaos-soak: $(STAMP)
	$(PY) -m chaos --only soak --speed 60 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
