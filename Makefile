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

# `make run` resumes after a kill (Ctrl-C, kill -9, a power loss) without Snakemake's flags: holding
# .snakemake/make-run.lock (flock: one `make run` per folder at a time), it removes the lock a killed
# Snakemake left behind and reruns the jobs a kill left incomplete. SNAKEMAKE_ARGS adds options
# (e.g. --configfile my.yaml).
SNAKEMAKE_ARGS ?=
SNAKEMAKE_RUN = $(VENV)/bin/snakemake --unlock $(SNAKEMAKE_ARGS) >/dev/null && \
	$(VENV)/bin/snakemake --cores $(CORES) --rerun-incomplete $(SNAKEMAKE_ARGS)

run: venv
	@mkdir -p .snakemake
	@if command -v flock >/dev/null; then \
		flock --nonblock --conflict-exit-code 75 .snakemake/make-run.lock sh -c '$(SNAKEMAKE_RUN)' || { \
			status=$$?; [ $$status -ne 75 ] || echo "make run: another make run works in this folder; wait for it to end." >&2; \
			exit $$status; }; \
	else \
		$(VENV)/bin/snakemake --cores $(CORES) --rerun-incomplete $(SNAKEMAKE_ARGS); \
	fi

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
