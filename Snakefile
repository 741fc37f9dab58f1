"""The scquery workflow lives in workflow/Snakefile, the Snakemake workflow catalog's layout. This file
lets `snakemake` run it from the repository's top level: it includes workflow/Snakefile as the main
Snakefile, so that file's `rule all` stays the default target (a plain `include:` would not carry it).
"""

workflow.include("workflow/Snakefile", overwrite_default_target=True)
