# Everything a fresh machine needs is installed here: `make demo` and `make test` start from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test demo test lint bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The bench extra (TensorFlow + Keras) is part of the test install: the benchmark smoke test runs the Keras reference.
# So is the ray extra: tests/test_predict_ray.py runs `predict --engine ray` on a local Ray against local predict.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,bench,ray]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo's run folder is remade each time (train refuses to overwrite a run). train names its report on
# stderr (its stdout, the same path for scripts, is dropped here), then the next three commands are printed.
demo: install
	rm -rf runs/demo
	$(BIN)/realfake train --out runs/demo >/dev/null
	@echo
	@echo "Next (from this folder; or run 'source $(BIN)/activate' once and type plain 'realfake'):"
	@echo "  $(BIN)/realfake predict runs/demo src/realfake/assets/demo-sample.zip --out runs/demo-rows.csv"
	@echo "      one row per image (p_fake, REAL / FAKE / uncertain); give it your own images, folders or zips"
	@echo "  $(BIN)/realfake serve runs/demo"
	@echo "      a page to drop images on at http://127.0.0.1:8000/, the REST API at /v1 (Ctrl-C stops)"
	@echo "  $(BIN)/realfake evaluate runs/demo --data OTHER.zip"
	@echo "      how it fares on a generator it never saw (OTHER.zip or a folder: REAL/ and FAKE/ images)"

# Two workers, a test file each at a time (--dist loadfile keeps a file's module fixtures in one worker): much of
# the suite waits on child processes starting Python and torch, which overlaps well even on 2 cores.
TEST_WORKERS ?= 2
test: install-test lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: install-test
	$(BIN)/ruff check src tests benchmarks

# realfake vs the Keras re-implementation of the notebook; BENCH_ARGS="--limit 6000 --epochs 5" for more.
bench: install-test
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Coverage-guided fuzzing of the image decoder (atheris), FUZZ_SECONDS long; not part of `make test`.
# Findings are saved under fuzz/crashes/ and belong in tests/data/test_fuzz_decode.py (PINNED).
FUZZ_SECONDS ?= 60
fuzz: install-test
	$(BIN)/python fuzz/fuzz_decode.py -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
