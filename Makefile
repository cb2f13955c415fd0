# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-all demo fixtures bench clean

install: $(STAMP)

# torch==2.13.0 goes first so pip takes the CPU build on disk instead of pulling the CUDA wheels.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $(STAMP)

# `make test` skips the tests marked slow (about 6 minutes on 2 cores); CI runs them all.
test: install
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python scripts/demo.py

# Regenerates tests/fixtures from the reference implementation (needs ../shared; not run by CI).
fixtures: install
	REF=$$(../shared/reference/setup-reference-env.sh) && PYTHONPATH=src:tests $$REF/bin/python scripts/make_parity_fixtures.py \
		&& PYTHONPATH=src:tests $$REF/bin/python scripts/make_train_parity_fixture.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
