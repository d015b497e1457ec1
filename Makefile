# transformer_jax: make install | demo | test | bench | lint
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_WORKERS ?= 2

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@touch $(STAMP)

demo: install
	$(BIN)/python -m transformer_jax.demo --workdir $(DEMO_DIR)

lint: install
	$(BIN)/ruff check transformer_jax tests configs benchmarks launch
	$(BIN)/ruff format --check transformer_jax tests configs benchmarks launch

format: install
	$(BIN)/ruff format transformer_jax tests configs benchmarks launch
	$(BIN)/ruff check --fix transformer_jax tests configs benchmarks launch

test: install lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15 tests

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) runs .pytest_cache
