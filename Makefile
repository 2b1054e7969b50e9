# Two commands a fresh machine needs: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: setup demo central test test-fast lint clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip==26.3"
	$(BIN)/python -m pip install -q --no-compile -c requirements/constraints.txt -e ".[dev,tracking]"
	@# pip compiles the modules it installs one at a time; compileall does it on every core, leaving out the
	@# libraries' own test folders, which nothing here imports (docs/federated.md, "The test suite's time")
	$(BIN)/python -m compileall -q -j 0 -x '/tests?/|/testing/_internal/' $(VENV)/lib
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/metamorphosis simulate --out $(OUT)

central: setup
	$(BIN)/metamorphosis central --out runs/central

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadscope --no-loadscope-reorder --durations=30

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
