# Two commands do all the set-up on a fresh machine:
#   make run    the workflow on its built-in default data (snakemake --cores $(CORES))
#   make test   the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2

.PHONY: venv run test lint bench bench-quick report clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,workflow,loom,bench]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/snakemake --cores $(CORES)

report: venv
	$(VENV)/bin/snakemake --cores $(CORES) --report report.html

test: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest

# CellTypist 1.7.1, a peer in the benchmarks, needs scikit-learn < 1.8: it gets its own environment.
CELLTYPIST_VENV ?= .venv-celltypist
$(CELLTYPIST_VENV)/.installed:
	python3 -m venv $(CELLTYPIST_VENV)
	$(CELLTYPIST_VENV)/bin/python -m pip install --quiet 'celltypist==1.7.1' 'scikit-learn<1.8'
	touch $@

bench: venv $(CELLTYPIST_VENV)/.installed
	SCQUERY_BENCH_CELLTYPIST_PYTHON=$(CELLTYPIST_VENV)/bin/python $(PY) -m benchmarks

bench-quick: venv
	$(PY) -m benchmarks --quick

clean:
	rm -rf results logs .snakemake report.html
