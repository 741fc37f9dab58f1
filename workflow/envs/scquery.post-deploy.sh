#!/usr/bin/env bash
# Runs inside the new conda environment after snakemake creates it: installs scquery from the
# repository the workflow was started from (SCQUERY_SOURCE, set by workflow/Snakefile).
set -euo pipefail
pip install --no-cache-dir -e "${SCQUERY_SOURCE:?SCQUERY_SOURCE is not set; run the workflow with snakemake from the scquery repository}"
