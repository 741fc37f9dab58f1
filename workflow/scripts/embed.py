"""Embed one query with the model (scquery.embed.embed): obsm['X_scquery']; the log reads like
`scquery embed`'s output."""

from common import log_to

log_to(snakemake.log[0])

from scquery.bundle import load_bundle  # noqa: E402
from scquery.embed import embed, embedded  # noqa: E402
from scquery.io import read_h5ad  # noqa: E402
from scquery.logs import logger  # noqa: E402
from scquery.outputs import write_h5ad  # noqa: E402

adata = read_h5ad(snakemake.input.data)
embed(
    adata,
    load_bundle(snakemake.input.bundle),
    **snakemake.params.inputs,
    **snakemake.params.values,
    **snakemake.params.genes,
)
write_h5ad(adata, snakemake.output[0])
logger.info("Wrote %s: %s.", snakemake.output[0], embedded(adata))
