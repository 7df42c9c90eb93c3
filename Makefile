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

$(VENV)/.installed: $(BIN)/python requirements-dev.txt libs/pyproject.toml $(wildcard services/*/pyproject.toml) cli/pyproject.toml \
		clients/python/pyproject.toml clients/python/setup.py
	$(BIN)/pip install --quiet grpcio-tools==1.85.1
	$(BIN)/python tools/gen_protos.py
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
	$(BIN)/python tools/gen_protos.py

protos: install

# stdout carries only the transcript (`make run AUDIO=x FORMAT=srt > x.srt`): no command echo
# (@), and the install step, the stack's endpoint table and progress go to stderr.
run:
	@$(MAKE) --no-print-directory --silent install >&2
	@$(BIN)/scribe down >/dev/null 2>&1 || true
	@$(BIN)/scribe up --models $(MODEL) >&2
	@status=0; $(BIN)/scribe transcribe "$(AUDIO)" --format $(FORMAT) || status=$$?; \
	  $(BIN)/scribe down >&2; exit $$status

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check libs/scribe_libs services cli tools tests clients/python
	cd protos && ../$(BIN)/buf lint

clean:
	rm -rf $(VENV) libs/scribe clients/python/scribe_client/_proto .scribe
