# The two commands of the README (demo; prometheus test), and test-all for the slow tier too.
# Each creates .venv and installs mmpretrain into it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint install prometheus clean

install: $(STAMP)

# editable_mode=compat: the install's .pth puts this folder on sys.path, so `import mmpretrain`
# finds the real package even in a script saved next to a clone named mmpretrain/. The default
# mode maps the package with a finder that Python asks only after its path search, and that
# search takes such a clone (a folder with no __init__.py) for a namespace package first, which
# has no load_pretrained. pip 23.1 passes --config-settings to an editable build (a venv of
# Python 3.10 may come with pip 22). The stamp depends on this file so that an existing .venv
# is reinstalled this way. bench: the data benchmark's smoke test.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet 'pip>=23.1'
	$(BIN)/pip install --quiet -e '.[dev,bench]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmpretrain demo

lint: $(STAMP)
	$(BIN)/ruff check mmpretrain tests benchmarks
	$(BIN)/ruff format --check mmpretrain tests benchmarks

# The fast tier (CI): one real test of every way in and every promise, within 25 minutes on
# 2 cores. test-all adds the slow tier (docs/testing.md says what is in each).
test: lint
	$(BIN)/pytest -m "not slow"

test-all: lint
	$(BIN)/pytest

# Debian's prometheus, which cluster/prometheus/run.sh and tests/integration/test_prometheus.py run.
prometheus:
	command -v prometheus >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y prometheus; }

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
