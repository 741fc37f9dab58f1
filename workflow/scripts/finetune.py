"""Fine-tune the classifier from the pretrained encoder and write the bundle (scquery.train.train)."""

from common import log_to

log_to(snakemake.log[0])

import anndata as ad  # noqa: E402

from scquery.bundle import save_bundle, trained  # noqa: E402
from scquery.logs import logger  # noqa: E402
from scquery.pretrain import load_encoder  # noqa: E402
from scquery.train import train  # noqa: E402

encoder = load_encoder(snakemake.input.weights) if "weights" in snakemake.input.keys() else None

bundle = train(
    ad.read_h5ad(snakemake.input.reference),
    label_key=snakemake.params.label_key,
    config=dict(snakemake.params.train),
    seed=snakemake.params.seed,
    encoder=encoder,
    **snakemake.params.values,
    verbose=2,
)
# The bundle holds the reference's neighbour index, built once here for all query jobs to read.
save_bundle(bundle, snakemake.output[0])
logger.info("Wrote %s: model %s, %s.", snakemake.output[0], bundle.model_id, trained(bundle))
