# Set-up and habits; each target first sets up .venv/ from pyproject.toml (Python >= 3.11):
#   make run        the workflow on its built-in default data (snakemake --cores $(CORES)); installs
#                   only what the workflow needs, and ends with the headline scores
#   make test       the fast tests (not those marked slow): the loop while developing
#   make test-all   lint, then every test: what CI runs (.ci/run)
#   make lint       ruff check, ruff format --check, snakefmt --check
#   make mutation   mutmut over the promise-holding modules (slow, not in CI; docs/MUTATION.md)
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
# TensorFlow, the default backend: its CPU-only build (1.3 GB installed, not 1.9 GB) where PyPI has
# one (Linux x86-64), else the standard one; a .venv that holds the standard one keeps it (both
# provide the module `tensorflow`: never the two in one environment).
HAS_TENSORFLOW := $(wildcard $(VENV)/lib/python3*/site-packages/tensorflow-*.dist-info)
CPU_ONLY := $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m))
TENSORFLOW ?= $(if $(and $(CPU_ONLY),$(if $(HAS_TENSORFLOW),,yes)),tensorflow-cpu,tensorflow)
# `make run` installs what the workflow needs (one backend); the other targets add what a developer
# needs (tests, with JAX for the backend tests; loom files; benchmarks; pre-commit) into the same .venv.
RUN_EXTRAS ?= $(TENSORFLOW),workflow
EXTRAS ?= $(RUN_EXTRAS),test,loom,bench,dev

.PHONY: venv run report test test-all lint mutation bench bench-quick bench-scale clean

# One stamp per set of extras: .installed-run for `make run`, .installed for the whole set (which
# includes the run set, so it stamps that too).
$(VENV)/.installed-run: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(RUN_EXTRAS)]'
	touch $@

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@ $(VENV)/.installed-run

venv: $(VENV)/.installed

# `make run` resumes after a kill (Ctrl-C, kill -9, a power loss) without Snakemake's flags: holding
# .snakemake/make-run.lock (flock: one `make run` per folder at a time; it waits for another one, or
# for a job a killed one left running, to end), it removes the lock a killed Snakemake left behind and
# reruns the jobs a kill left incomplete. SNAKEMAKE_ARGS adds options (e.g. --configfile my.yaml).
# It ends with the headline scores (results/report/scores.txt) when they are of the current model.
# The unlock step prints nothing unless it removed a lock (then Snakemake's "Unlocked working
# directory.") or failed (then all it said, e.g. what is wrong with the configuration).
SNAKEMAKE_ARGS ?=
SNAKEMAKE_RUN = locked=$$(ls -A .snakemake/locks 2>/dev/null); \
	said=$$($(VENV)/bin/snakemake --unlock $(SNAKEMAKE_ARGS) 2>&1) || { printf "%s\n" "$$said" >&2; exit 1; }; \
	if [ -n "$$locked" ]; then printf "%s\n" "$$said" | grep -v "^Using workflow specific profile" >&2; fi; \
	$(VENV)/bin/snakemake --cores $(CORES) --rerun-incomplete $(SNAKEMAKE_ARGS)

run: $(VENV)/.installed-run
	@mkdir -p .snakemake
	@if command -v flock >/dev/null; then \
		flock --nonblock .snakemake/make-run.lock true || \
			echo "make run: waiting for the other make run in this folder to end ..." >&2; \
		flock .snakemake/make-run.lock sh -c '$(SNAKEMAKE_RUN)'; \
	else \
		$(VENV)/bin/snakemake --cores $(CORES) --rerun-incomplete $(SNAKEMAKE_ARGS); \
	fi
	@if [ -f results/report/scores.txt ] && [ ! results/report/scores.txt -ot results/model ]; then \
		cat results/report/scores.txt; \
	fi

report: $(VENV)/.installed-run
	$(VENV)/bin/snakemake --cores $(CORES) --report report.html

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow

test: venv
	$(VENV)/bin/pytest -m "not slow"

test-all: lint
	$(VENV)/bin/pytest

# Mutation testing ([tool.mutmut] in pyproject.toml: the modules and the fast tests that check them), in
# a copy of the checkout (mutants/); `$(VENV)/bin/mutmut results` lists the survivors, `mutmut show NAME`
# shows one. MUTANTS: the functions mutated (docs/MUTATION.md: why these); MUTANTS= mutates every
# function of the modules named in pyproject.toml.
MUTANTS ?= 'scquery.outputs*' 'scquery.query.x_vote*' 'scquery.query.x_combine_evidence*' \
	'scquery.rules.x_unknown_reasons*' 'scquery.preprocessing.scales.x_detect_values*' \
	'scquery.preprocessing.scales.x__units*' 'scquery.preprocessing.scales.x_linear_values*' \
	'scquery.preprocessing.scales.x_to_linear*' 'scquery.preprocessing.scales.x_assumed_total*' \
	'scquery.preprocessing.scales.x_recognize*' 'scquery.preprocessing.scales.x_decide*' \
	'scquery.preprocessing.scales.x__normalized*' 'scquery.preprocessing.scales.x_describe_values*'
mutation: venv
	$(PY) -m pip install --quiet 'mutmut>=3.8,<4'
	$(VENV)/bin/mutmut run --max-children $(CORES) $(MUTANTS)

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

# Scale alone (part of `make bench`): training throughput and memory to 1M cells, the neighbour index
# against its peers at 100k and 1M reference cells (10M extrapolated), training from disk, big queries
# and extending at atlas scale, and training's throughput against the matmul peak.
bench-scale: venv
	$(PY) -m benchmarks --only speed,scale,atlas,throughput

clean:
	rm -rf results logs .snakemake report.html mutants .test/results .test/logs .test/.snakemake
