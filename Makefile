# liver_pcr — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.liver_pcr-installed
export MPLBACKEND ?= Agg
export PYTHONHASHSEED ?= 0

.PHONY: demo test setup sync lint nbtest pytest lab docs bench slow clean help readme

help:
	@echo "make demo   set up .venv and run the main job (liver-pcr demo)"
	@echo "make test   set up .venv, check notebook/library sync, lint, run every notebook and the pytest suite"
	@echo "make lab    JupyterLab on the course (nbs/)"
	@echo "make docs   render the notebooks to HTML in _docs/"
	@echo "make bench  run the benchmarks in bench/"

# create the virtual environment if missing and install the package with its dev extra
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/liver-pcr demo $(DEMO_ARGS)

# the library is generated from the notebooks: exporting and cleaning must change nothing
sync: $(STAMP)
	@snap() { find liver_pcr nbs -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs sha1sum; }; \
	before="$$(snap)"; \
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean || exit 1; \
	after="$$(snap)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "error: notebooks and library out of sync: nbdev-export/nbdev-clean changed these files:"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^>' | awk '{print "  " $$3}'; \
	  echo "edit the notebooks in nbs/ (never liver_pcr/*.py), run nbdev-export and nbdev-clean, and commit the result"; \
	  exit 1; \
	fi; echo "notebooks and library in sync"

# every notebook top to bottom in a fresh kernel, on the CPU; each notebook chooses its tiny setting itself
# (the tutorials: a `#| real` cell that nbdev-test skips unless `--flags real`)
nbtest: $(STAMP)
	LIVER_PCR_QUIET=1 $(BIN)/nbdev-test nbs --n-workers 2 --timing

pytest: $(STAMP)
	LIVER_PCR_QUIET=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider

# the lint gate: pyflakes' errors and one statement per line on the exported library (config in pyproject.toml);
# the course's code: one statement per line, lines <= 100 characters
lint: $(STAMP)
	$(BIN)/ruff check liver_pcr
	$(BIN)/ruff check --select E701,E702,E501 --line-length 100 nbs/tutorials

test: sync lint nbtest pytest

# the long runs: slow-tagged notebook cells and slow tests
slow: $(STAMP)
	$(BIN)/nbdev-test nbs --flags slow --n-workers 1
	LIVER_PCR_SLOW=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider

lab: $(STAMP)
	$(BIN)/jupyter lab nbs

docs: $(STAMP)
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev-docs; else \
	  echo "quarto not found: rendering notebooks with jupyter nbconvert into _docs/"; \
	  mkdir -p _docs && find nbs -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | while read nb; do \
	    rel=$${nb#nbs/}; mkdir -p "_docs/$$(dirname $$rel)"; \
	    $(BIN)/jupyter nbconvert --to html --output-dir "_docs/$$(dirname $$rel)" "$$nb" >/dev/null 2>&1 || { echo "failed: $$nb"; exit 1; }; \
	  done; echo "wrote _docs/ (open _docs/index.html)"; fi

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf _docs _proc build dist *.egg-info

# README.md is rendered from nbs/index.ipynb (nbdev-readme needs quarto, which may be absent): `#| hide` cells are
# dropped and `#|` lines removed from the others (in a temporary copy); nbconvert writes the Markdown
readme: $(STAMP)
	set -o pipefail; tmp=$$(mktemp -d) && \
	$(BIN)/python -c "$$README_FILTER" nbs/index.ipynb $$tmp/index.ipynb && \
	$(BIN)/jupyter nbconvert --to markdown --stdout $$tmp/index.ipynb 2>/dev/null | sed -e 's#](images/#](nbs/images/#g' | cat -s > README.md; \
	rc=$$?; rm -rf $$tmp; exit $$rc

define README_FILTER
import json, re, sys
nb = json.load(open(sys.argv[1]))
hidden = re.compile(r'^#\|\s*hide\s*$$', re.M)
cells = [c for c in nb['cells'] if c['cell_type'] != 'code' or not hidden.search(''.join(c['source']))]
for c in cells:
    if c['cell_type'] == 'code':
        c['source'] = [line for line in c['source'] if not line.startswith('#|')]
nb['cells'] = cells
nb['metadata']['language_info'] = {'name': 'python'}  # nbconvert then fences the code as python
json.dump(nb, open(sys.argv[2], 'w'))
endef
export README_FILTER
