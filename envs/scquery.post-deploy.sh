#!/usr/bin/env bash
# Runs inside the new conda environment after Snakemake creates it (scquery.yaml): installs scquery,
# editable, from the checkout the workflow runs from (SCQUERY_SOURCE, set by workflow/Snakefile).
# Its dependencies are all in scquery.yaml, so pip installs nothing else and builds offline.
set -euo pipefail
pip install --no-cache-dir --no-deps --no-build-isolation -e "${SCQUERY_SOURCE:?SCQUERY_SOURCE is not set; run the workflow with snakemake from the scquery repository}"
