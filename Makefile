# Two commands for a fresh machine: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
EXP    ?= experiments/quick
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test venv bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/essgrid run --preset quick --exp $(EXP)

test: venv
	$(BIN)/python -m pytest -q -ra tests

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf experiments .pytest_cache
