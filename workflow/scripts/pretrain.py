"""Greedy denoising pretraining of the encoder on all reference cells and the unlabelled datasets
(scquery.train.pretrain)."""

from common import log_to

log_to(snakemake.log[0])

import json  # noqa: E402

import anndata as ad  # noqa: E402

from scquery.pretrain import save_encoder  # noqa: E402
from scquery.train import pretrain  # noqa: E402

encoder = pretrain(
    ad.read_h5ad(snakemake.input.reference),
    label_key=snakemake.params.label_key,
    config=dict(snakemake.params.train),
    unlabeled=[ad.read_h5ad(path) for path in snakemake.input.unlabeled] or None,
    seed=snakemake.params.seed,
    **snakemake.params.values,
    verbose=2,
)
save_encoder(snakemake.output.weights, encoder)
with open(snakemake.output.history, "w") as handle:
    json.dump(encoder.history, handle, indent=1)
