# The two commands a newcomer needs: `make run` and `make test`.
# Everything else is set up on the way, idempotently.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench setup services clean

WEB    := web/node_modules/.installed

setup: $(STAMP) $(WEB)

# The virtual env with the project (editable, so twistd finds the plugins in
# twisted/plugins/) and every pinned dependency.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "relay needs Python 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt \
	  --config-settings editable_mode=compat -e '.[test,bench]'
	touch $@

# The front end's npm packages (Uppy; tus-js-client for the client tests),
# exactly as locked.
$(WEB): web/package.json web/package-lock.json
	tools/ensure-packages node:nodejs npm:npm
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# yosys: the example `synth` job kind's tool.
services:
	tools/ensure-rabbitmq
	tools/ensure-packages yosys:yosys

run: setup services
	$(BIN)/python tools/run_local.py

# The tests also talk to PostgreSQL (the cloud registry's other database),
# drive Debian's Chromium (the browser tests) and attack the edge with
# Debian's slowhttptest (the security tests); a missing one is a failure,
# not a skip.
#
# Most of the suite waits (on emulated links, on relay's processes, on the
# broker), so two test processes run at once, each taking whole files
# (--dist loadfile: a file's class- and module-wide servers are started
# once): on a 2-core machine beside other work the suite took 15 min this
# way against 27 min in one process. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: setup services
	tools/ensure-postgresql
	tools/ensure-packages chromium:chromium curl:curl wget:wget aria2c:aria2 nginx:nginx slowhttptest:slowhttptest
	$(BIN)/ruff check relay tests bench tools twisted
	$(BIN)/mypy relay
	RELAY_REQUIRE_POSTGRESQL=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check relay tests bench tools twisted
	$(BIN)/mypy relay

BENCHES := $(filter-out bench/_common.py bench/linkemu.py,$(wildcard bench/*.py))

bench: setup services
	@for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf var build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
