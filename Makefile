# `make run` and `make test` work on a fresh clone: each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# `make run` installs what serving needs (requirements-run.txt); the other targets
# also the tools (requirements-dev.txt). A stamp per set, named by its files' sum.
RUN_FILES := requirements.txt requirements-run.txt
DEV_FILES := $(RUN_FILES) requirements-dev.txt
RUN_STAMP := $(VENV)/.installed-run-$(shell cat $(RUN_FILES) | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-dev-$(shell cat $(DEV_FILES) | cksum | cut -d' ' -f1)

# A venv of Python 3.11 or newer, made again when the one there is older (made with
# another PYTHON=, pip refused every pinned package, and every later run reused it).
NEW_VENV = $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	command -v $(PYTHON) >/dev/null || { \
		echo "$(PYTHON) not found: give Python 3.11 or newer with make PYTHON=…" >&2; \
		exit 1; }; \
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "Python 3.11 or newer is needed: $(PYTHON) is $$($(PYTHON) -V 2>&1);" \
			"give another with make PYTHON=python3.11" >&2; exit 1; }; \
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }

.PHONY: install install-run run test test-pgbouncer scale-out scale-out-soak lint format openapi token bench soak

install: $(STAMP)

install-run: $(RUN_STAMP)

$(STAMP): $(DEV_FILES)
	@$(NEW_VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@ $(RUN_STAMP)

$(RUN_STAMP): $(RUN_FILES)
	@$(NEW_VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-run.txt
	rm -f $(VENV)/.installed-run-*
	touch $@

run: install-run
	PYTHONPATH=backend $(PY) -m app

# Also needs Node.js 20.19+ with npm (the generated-client check) and Redis on
# 127.0.0.1:6379 (the shared rate-limit tests); Debian's chromium is installed with
# apt when missing (the browser tests).
test: install
	scripts/install-chromium.sh
	$(PY) -m pytest

# The contract suite again, unchanged, through PgBouncer in transaction pooling mode.
test-pgbouncer: install
	scripts/with-pgbouncer.sh $(PY) -m pytest backend/tests/contract -q

# Three instances behind HAProxy, with PgBouncer and a shared Redis, until Ctrl-C
# (specs/006-operations: "Running N instances").
scale-out: install
	scripts/scale-out.sh

# The soak through that setup: cross-instance checks, then the load through HAProxy
# with one instance SIGKILLed half-way, and the ledger checked against the database.
SOAK_ARGS ?= --minutes 3
scale-out-soak: install
	scripts/scale-out.sh $(PY) bench/soak.py --scale-out $(SOAK_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Regenerate the committed OpenAPI document (a contract test fails when it drifts).
openapi: install
	PYTHONPATH=backend $(PY) -m app.api.openapi > specs/001-task-api/openapi.json

# A development token for curl: make token USER=alice (needs BETTER_AUTH_SECRET or JWT_SECRET).
# USER must be given here: the one in the environment is your login name, not a user id.
token: install-run
	@if [ "$(origin USER)" != "command line" ]; then \
	  echo "usage: make token USER=<user id>   (the token's sub, e.g. USER=alice)" >&2; exit 2; fi
	@PYTHONPATH=backend $(PY) -m app.devtoken "$(USER)" $(MINUTES)

# The benchmark suite: bench/bench.py (BENCH_ARGS="--large --duration 20" etc.),
# the driver comparison, then many users, open connections and overload
# (bench/capacity.py, CAPACITY_ARGS="--quick"), then delta sync and batches
# (bench/sync.py, SYNC_ARGS="--duration 5"), then one user's searches beside other
# users' reads (bench/neighbour.py), then the soak without and with a hostile
# load (make soak). Uses BENCH_DATABASE_URL when set, else a private PostgreSQL
# under .data/.
bench: install
	bash -c 'source scripts/common.sh && need wrk wrk'
	PYTHONPATH=backend:. $(PY) bench/bench.py $(BENCH_ARGS)
	PYTHONPATH=backend:. $(PY) bench/drivers.py
	ulimit -n 65536 2>/dev/null || true; PYTHONPATH=backend:. $(PY) -m bench.capacity $(CAPACITY_ARGS)
	PYTHONPATH=backend:. $(PY) -m bench.sync $(SYNC_ARGS)
	PYTHONPATH=backend:. $(PY) -m bench.neighbour
	$(MAKE) soak

# The soak (two servers, connections killed every minute, ledger checked), then the
# same beside a hostile load, to compare p99 and RSS (specs/006-operations).
SOAK_MINUTES ?= 2
soak: install
	PYTHONPATH=backend:. $(PY) bench/soak.py --minutes $(SOAK_MINUTES)
	PYTHONPATH=backend:. $(PY) bench/soak.py --minutes $(SOAK_MINUTES) --hostile
