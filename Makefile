# Everything a fresh machine needs is installed here: `make demo` and `make test` start from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/realfake train --out runs/demo

test: install-test lint
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
