# Developer entry points; everything runs from the project-local .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two stamps: serving needs only the service and its speed-ups (`make run`, a fresh clone's
# first start); the tests add schemathesis, hypothesis, Playwright... (`make test`).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: venv install run test bench migrate clean

venv install: $(STAMP)

# Re-install only when pyproject.toml is newer than the stamp.
$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[fast]'
	touch $(RUN_STAMP)

# The test extra on top; it holds everything `run` needs, so its stamp covers run's too.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,fast]'
	touch $(STAMP) $(RUN_STAMP)

# Embedded PostgreSQL when DATABASE_URL is unset; serves, then prints the dev token (kept in
# .data/dev-token across restarts: rm it to rotate; the banner's `Dev token: <token>` line).
# A busy PORT or .data: one line (make then adds its own and exits 2).
# REPLICA=1: the embedded primary gets a hot standby, and reads go to it (docs/replicas.md).
run: $(RUN_STAMP)
	$(PY) -m service dev $(if $(REPLICA),--replica)

# In parallel (pytest-xdist: a database per worker; the wall-clock-bound modules together on
# one worker, tests/conftest.py TIMING), saying why anything was skipped (-rs).
# One file: make test PYTEST_ARGS=tests/test_x.py; serially: TEST_WORKERS=0.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Then the service vs a lean reference (bench/run.py): one enterprise, 100 enterprises x 20 runs,
# a mixed load with long-polls, a quiet tenant beside a noisy one (--scenarios picks);
# e.g. make bench BENCH_ARGS="--workers 1,2" or BENCH_ARGS="--scenarios tenants,mixed".
# Then the service at scale (bench/scale.py): 1M runs seeded, list latency, replay rate;
# e.g. make bench SCALE_ARGS="--runs 100000". Then webhook delivery rate and lag
# (bench/webhooks.py; WEBHOOK_BENCH_ARGS="--seconds 30 --workers 2"). Then reads with and
# without a hot standby
# (bench/replicas.py), e.g. REPLICA_ARGS="--seconds 10 --rounds 2". Then the write path
# with and without the insights upkeep through HTTP (bench/insights_ab.py --http: issue 21's
# 5 % target), e.g. INSIGHTS_AB_ARGS="--rounds 16".
# First the yardstick (YARDSTICK, ../shared/bench: the one measure of our speed ratios,
# docs/performance.md): its two lines, whether or not a goal is missed (it exits 1 then).
YARDSTICK ?= ../shared/bench
INSIGHTS_AB_ARGS ?= --rounds 8
bench: $(STAMP)
	@# wrk drives the load (Debian's package); without it bench/run.py falls back to a
	@# Python load generator, which takes much of the 2 cores itself.
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get install -y -q wrk >/dev/null 2>&1; } || echo "wrk not installed: Python load" >&2
	@if [ -x $(YARDSTICK)/ratio-one-enterprise ]; then \
		$(YARDSTICK)/ratio-one-enterprise || true; $(YARDSTICK)/ratio-many-enterprises || true; \
	else echo "no yardstick at $(YARDSTICK): skipped" >&2; fi
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/scale.py $(SCALE_ARGS)
	$(PY) bench/webhooks.py $(WEBHOOK_BENCH_ARGS)
	$(PY) bench/replicas.py $(REPLICA_ARGS)
	$(PY) bench/insights_ab.py --http $(INSIGHTS_AB_ARGS)

migrate: $(RUN_STAMP)
	$(PY) -m service migrate

# Keeps .data/ (embedded PostgreSQL clusters may still be running from it).
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
