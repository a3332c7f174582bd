# Quickturn — two commands: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: on our machines `torch==2.13.0` is a local CPU build; elsewhere set TORCH_SPEC/PIP_EXTRA,
# e.g. PIP_EXTRA="--index-url https://download.pytorch.org/whl/cpu" for a small CPU-only download.
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
TEST_MODELS := whisper-tiny.en whisper-base smollm2-135m-instruct piper-joe-medium silero-vad smart-turn-v3.2

.PHONY: install models demo test bench-deps bench-cpu bench-v2v clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

models: install
	$(BIN)/quickturn models fetch

demo: models
	$(BIN)/quickturn demo

test: install
	$(BIN)/quickturn models fetch $(TEST_MODELS)
	bash tests/setup_chromium.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench-deps: models
	$(BIN)/pip install -q -e '.[bench]'

bench-cpu: bench-deps
	$(BIN)/python bench/turn.py

# issue 6's benchmark on the embedded default: every variant (~30 min on 2 cores), JSON and plots in bench/results
bench-v2v: bench-deps
	$(BIN)/python bench/voice_to_voice.py --config cpu

clean:
	rm -rf $(VENV) build *.egg-info
