# Two commands a newcomer needs:
#   make demo   set up and run the main job on the bundled default data
#   make test   set up everything (frameworks, Go, Chromium) and run the whole test suite
# Both start from nothing but Python 3.11, pip and make; everything lands in ./.venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# Parallel test workers: the CI machines have 2 cores.
WORKERS ?= 2

.PHONY: demo test setup test-setup system-deps bench fuzz clean vendor-js

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.demo-installed: requirements-demo.txt $(VENV)/.core-installed
	$(PIP) install -r requirements-demo.txt
	touch $@

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.core-installed
	$(PIP) install -r requirements-test.txt
	# TF1 RNN cells (LSTMCell, GRUCell) now live only in tf-keras; --no-deps, or it would pull
	# the full (GPU) tensorflow package beside tensorflow-cpu.
	$(PIP) install --no-deps tf-keras==2.21.0
	touch $@

setup: $(VENV)/.demo-installed

test-setup: $(VENV)/.test-installed system-deps

# Go (to check gob files against real encoding/gob) and Chromium (viewer tests) come from Debian.
system-deps:
	@missing=""; \
	command -v go >/dev/null 2>&1 || missing="$$missing golang-go"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(BIN)/python examples/quickstart.py
	$(BIN)/python examples/digits/demo.py
	$(BIN)/python examples/fpga/export_article_net.py --out demo-out/fpga

test: test-setup
	$(BIN)/python -m pytest -n $(WORKERS) -q

# The long fuzz pass: mutants per format of files the real frameworks write; new failures are
# minimised into tests/fuzz/regressions/ and the table goes to test-artifacts/fuzz/summary.md.
FUZZ_MUTANTS ?= 4500
fuzz: test-setup
	PYTHONPATH=tests/fuzz $(BIN)/python -m wvfuzz --mutants $(FUZZ_MUTANTS)

bench: test-setup
	$(BIN)/python bench/save_load.py

clean:
	rm -rf $(VENV) demo-out test-artifacts .pytest_cache

# The viewer's graph layout library, vendored so that a pip install needs no node and no network:
# re-download the pinned elkjs from npm (npm checks the tarball's integrity) and check the file's
# sha256 before it replaces the copy in the package. See docs/viewer.md.
ELK_VERSION := 0.12.1
ELK_SHA256  := b1032b7cfd2a57c54c6f0e8369d7665e19a579954f7cd20a6dae28f1912ea0d7
VENDOR_DIR  := src/weightvault/viewer/static/vendor
vendor-js:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent elkjs@$(ELK_VERSION) >/dev/null && tar xzf elkjs-$(ELK_VERSION).tgz) && \
	echo "$(ELK_SHA256)  $$tmp/package/lib/elk.bundled.js" | sha256sum -c - && \
	mkdir -p $(VENDOR_DIR) && cp "$$tmp/package/lib/elk.bundled.js" $(VENDOR_DIR)/elk.bundled.js && \
	cp "$$tmp/package/LICENSE.md" $(VENDOR_DIR)/elk.LICENSE.md && \
	echo "vendored elkjs $(ELK_VERSION) into $(VENDOR_DIR)"
