# transformer_jax: make install | demo | test | bench | lint
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORE_STAMP := $(VENV)/.installed-core
DEMO_DIR ?= runs/demo
PYTEST_WORKERS ?= 2
SOURCES := transformer_jax tests benchmarks launch

.PHONY: install demo test test-fast lint format bench clean

# install: the package with the test, lint and benchmark tools (PyTorch, transformers).
install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@touch $(STAMP) $(CORE_STAMP)

# The demo needs the package alone (configs/ is the package's transformer_jax/configs/).
$(CORE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e . --config-settings editable_mode=compat
	@touch $(CORE_STAMP)

demo: $(CORE_STAMP)
	$(BIN)/python -m transformer_jax.demo --workdir $(DEMO_DIR)

lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

# test: everything (CI). test-fast: all but the tests marked slow (end-to-end runs,
# subprocesses, faults, several hosts), for everyday work.
test: install lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15 tests

test-fast: install lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15 -m "not slow" tests

bench: install
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.attention_bench
	$(BIN)/python -m benchmarks.beam_cache_bench

clean:
	rm -rf $(VENV) runs .pytest_cache
