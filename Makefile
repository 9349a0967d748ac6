# The two commands the README starts with: `make demo` (the main job) and `make test`.
# Both create or update .venv in the repository root from nothing but Python and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-out

.PHONY: venv demo test lint typecheck unit bench fuzz clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[tools,train,dev,postgres]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/triage demo --out $(DEMO_OUT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q

test: lint typecheck unit

bench: venv
	$(BIN)/python tests/bench/run_all.py

# 100,000 mutated DICOM inputs through the servicer's entry point, then the worst 2,000 over
# gRPC from 8 clients; findings are copied into tests/fuzz/regressions (replayed by make test).
fuzz: venv
	$(BIN)/python -m tests.fuzz.campaign --inputs 100000 --grpc 2000 --save-regressions

clean:
	rm -rf $(VENV) $(DEMO_OUT) fuzz-out .pytest_cache .mypy_cache .ruff_cache
