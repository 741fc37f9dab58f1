"""Greedy denoising pretraining of the encoder (scquery.train.pretrain_reference)."""

from common import log_to

log_to(snakemake.log[0])

import json  # noqa: E402

import anndata as ad  # noqa: E402
from scquery.pretrain import save_encoder  # noqa: E402
from scquery.train import pretrain_reference  # noqa: E402

weights, history = pretrain_reference(
    ad.read_h5ad(snakemake.input[0]),
    label_key=snakemake.params.label_key,
    config=dict(snakemake.params.train),
    seed=snakemake.params.seed,
    **snakemake.params.values,
    verbose=2,
)
save_encoder(snakemake.output.weights, weights)
with open(snakemake.output.history, "w") as handle:
    json.dump(history, handle, indent=1)
