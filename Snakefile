"""scquery workflow: ingest, train (pretrain + fine-tune), embed and query each dataset, report.

Run `snakemake --cores 2` for the built-in default data (config/config.yaml), then
`snakemake --report report.html`. config/README.md describes every configuration key.
"""

import os

from snakemake.utils import min_version

min_version("9.0")

# The repository the conda environment installs scquery from (envs/scquery.post-deploy.sh).
os.environ.setdefault("SCQUERY_SOURCE", workflow.basedir)


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/query.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
