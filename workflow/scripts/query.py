"""Predict one query's cell types from its nearest reference cells (scquery.query.query) and
summarize them (scquery.evaluate.summarize); the log reads like `scquery query`'s output."""

from common import log_to

log_to(snakemake.log[0])

from scquery.bundle import load_bundle  # noqa: E402
from scquery.evaluate import score, summarize  # noqa: E402
from scquery.io import read_h5ad  # noqa: E402
from scquery.logs import logger  # noqa: E402
from scquery.outputs import write_h5ad, write_table  # noqa: E402
from scquery.query import query  # noqa: E402

adata = read_h5ad(snakemake.input.data)
matches = query(
    adata,
    load_bundle(snakemake.input.bundle),
    **snakemake.params.query,
    **snakemake.params.values,
    **snakemake.params.genes,
)
label_key = snakemake.params.label_key
truth = label_key if label_key in adata.obs else None
summary = summarize(adata, groupby=truth, matches=matches)
write_h5ad(adata, snakemake.output.data)
write_table(matches, snakemake.output.matches)
write_table(summary, snakemake.output.summary)
logger.info("Wrote %s: %s.", snakemake.output.data, score(adata, truth))
