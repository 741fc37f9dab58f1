"""The built-in data: pbmc68k_reduced split into a reference and a held-out query."""

from common import log_to

log_to(snakemake.log[0])

from scquery.datasets import pbmc68k_split  # noqa: E402
from scquery.outputs import write_h5ad  # noqa: E402

reference, query = pbmc68k_split(query_fraction=snakemake.params.query_fraction, seed=snakemake.params.seed)
write_h5ad(reference, snakemake.output.reference)
write_h5ad(query, snakemake.output.query)
print(f"reference: {reference.n_obs:,} cells; held-out query: {query.n_obs:,} cells")
