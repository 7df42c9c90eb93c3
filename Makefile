# make run   AUDIO=path/to/file FORMAT=txt|srt|vtt|json MODEL=base   transcribe through the embedded stack
# make test                                                           the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
AUDIO ?= tests/fixtures/speech_en.wav
FORMAT ?= txt
MODEL ?= base
export SCRIBE_HOME ?= $(CURDIR)/.scribe

.PHONY: install run test lint protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements-dev.txt libs/pyproject.toml $(wildcard services/*/pyproject.toml) cli/pyproject.toml
	$(BIN)/pip install --quiet grpcio-tools==1.85.1
	$(BIN)/python tools/gen_protos.py
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
	$(BIN)/python tools/gen_protos.py

protos: install

run: install
	@$(BIN)/scribe down >/dev/null 2>&1 || true
	$(BIN)/scribe up --models $(MODEL)
	@status=0; $(BIN)/scribe transcribe "$(AUDIO)" --format $(FORMAT) || status=$$?; \
	  $(BIN)/scribe down; exit $$status

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check libs/scribe_libs services cli tools tests
	cd protos && ../$(BIN)/buf lint

clean:
	rm -rf $(VENV) libs/scribe .scribe
