"""Predict one query's cell types from its nearest reference cells (scquery.query.query) and
summarize them (scquery.evaluate.summarize)."""

from common import log_to

log_to(snakemake.log[0])

import anndata as ad  # noqa: E402

from scquery.bundle import load_bundle  # noqa: E402
from scquery.evaluate import summarize  # noqa: E402
from scquery.io import write_h5ad  # noqa: E402
from scquery.query import query  # noqa: E402

adata = ad.read_h5ad(snakemake.input.data)
matches = query(
    adata,
    load_bundle(snakemake.input.bundle),
    **snakemake.params.query,
    **snakemake.params.values,
    **snakemake.params.genes,
)
write_h5ad(adata, snakemake.output.data)
matches.to_csv(snakemake.output.matches, sep="\t", index=False)
label_key = snakemake.params.label_key
summary = summarize(adata, groupby=label_key if label_key in adata.obs else None, matches=matches)
summary.to_csv(snakemake.output.summary, sep="\t", index=False)
print(summary.to_string())
