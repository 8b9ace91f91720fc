# stream_detector: `make run` sets everything up and runs the demo; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run demo test test-fast lint lock evaluate bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create the virtualenv and install the package with dev tools

run: $(STAMP) ## set up, start the embedded broker and run the live demo
	$(BIN)/stream-detector demo

demo: run

test: $(STAMP) ## run the whole test suite (starts its own embedded broker)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## the tests that need neither the broker nor slow training
	$(BIN)/python -m pytest -q -m "not broker and not slow"

evaluate: $(STAMP) ## detection quality on NAB, ODDS, SMAP/MSL (ARGS="--nab --quick" for a subset)
	$(BIN)/python scripts/evaluate.py $(ARGS)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check stream_detector tests scripts
	$(BIN)/mypy stream_detector

# The production image's dependencies: setup.cfg's install_requires (no extras) and the
# build requirements, resolved from PyPI for the image's Python and platform (Dockerfile),
# with hashes. Existing pins are kept where they still fit; LOCK_ARGS=--upgrade moves all.
LOCK := requirements/prod.lock
PYPI_INDEX ?= https://pypi.org/simple
lock: $(STAMP) ## regenerate requirements/prod.lock, the image's hashed dependencies (needs PyPI)
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/uv pip compile --quiet --no-config --no-cache \
	    --index-url $(PYPI_INDEX) --no-emit-index-url --generate-hashes \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    $(LOCK_ARGS) --output-file $(LOCK) setup.cfg requirements/build.in

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
