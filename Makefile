# Set-up and checks. `make demo` and `make test` work on a fresh machine (Python 3.11+, Java 17 + Maven for tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo serve test lint hapi clean

$(VENV)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/fhirsvc demo

serve: setup
	$(BIN)/fhirsvc serve

hapi:
	tests/hapi/run --build-only

lint: setup
	$(BIN)/ruff check fhirsvc tests fixtures bench
	$(BIN)/ruff format --check fhirsvc tests bench
	$(BIN)/mypy
	$(BIN)/fhirsvc mappings check

test: setup hapi lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) tests/hapi/target .pytest_cache .mypy_cache .ruff_cache
