# The two commands of the README (demo; prometheus test), and test-all for the slow tier too.
# Each creates .venv and installs mmpretrain into it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint install prometheus clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,bench]'  # bench: the data benchmark's smoke test
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

# Debian's prometheus, which cluster/prometheus/run.sh and tests/e2e run.
prometheus:
	command -v prometheus >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y prometheus; }

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
