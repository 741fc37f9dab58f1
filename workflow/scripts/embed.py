"""Embed one query with the model (scquery.embed.embed): obsm['X_scquery']."""

from common import log_to

log_to(snakemake.log[0])

import anndata as ad  # noqa: E402

from scquery.bundle import load_bundle  # noqa: E402
from scquery.embed import embed  # noqa: E402
from scquery.io import write_h5ad  # noqa: E402

adata = ad.read_h5ad(snakemake.input.data)
embed(
    adata,
    load_bundle(snakemake.input.bundle),
    **snakemake.params.inputs,
    **snakemake.params.values,
    **snakemake.params.genes,
)
write_h5ad(adata, snakemake.output[0])
print(f"embedded {adata.n_obs:,} cells; gene overlap: {adata.uns['scquery']['overlap']}")
