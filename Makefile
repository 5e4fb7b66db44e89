# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint docs clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: on these machines that wheel is local and CPU-only.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/mice demo --preset quick --out runs/demo

# The browser tests of mice.viz drive Debian's Chromium (offline, through Playwright from the dev extra).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The docs site (MkDocs, Material, mkdocstrings): the CLI page is regenerated from the commands first.
docs: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python docs/scripts/cli_reference.py
	PYTHONPATH=$(CURDIR) NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d $(CURDIR)/site

test: $(STAMP) chromium lint
	PYTHONPATH=$(CURDIR) NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d $(CURDIR)/.cache/site
	# MICE_CACHE: a fresh cache per run, so tests never lean on corpora or indexes built by hand earlier.
	rm -rf $(CURDIR)/.cache/test
	MICE_CACHE=$(CURDIR)/.cache/test HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=900 tests notebooks

clean:
	rm -rf $(VENV) runs site .pytest_cache
