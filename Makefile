# make demo: create .venv, install, run the article examples and print their results
# make test: create .venv if missing, install test extras, run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_BASE := $(VENV)/.installed-base
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test bench bench-smoke clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_BASE): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

$(STAMP_TEST): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(STAMP_BASE)

demo: $(STAMP_BASE)
	$(BIN)/python -m tapegrad.demo

test: $(STAMP_TEST)
	$(BIN)/python -m pytest -q tests
	TAPEGRAD_DEBUG=1 $(BIN)/python -m pytest -q -x -p no:cacheprovider tests/test_tape.py tests/test_semantics.py tests/test_fused.py tests/test_native.py tests/test_capture.py tests/test_fold.py
	$(BIN)/python -m bench --smoke

bench: $(STAMP_TEST)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
