"""Report figures of the model: training curves (bundle history) and the reference UMAP."""

from common import log_to, save_figure

log_to(snakemake.log[0])

import matplotlib  # noqa: E402

matplotlib.use("Agg")
matplotlib.rcParams["figure.figsize"] = (4, 4)  # each UMAP panel

import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402

import scquery as scq  # noqa: E402

bundle = scq.load(snakemake.input.bundle)
save_figure(scq.pl.history(bundle, show=False), snakemake.output.curves)

seed, max_cells = snakemake.params.seed, snakemake.params.max_cells
reference = bundle.reference
if reference.n_obs > max_cells:
    reference = reference[
        np.sort(np.random.default_rng(seed).choice(reference.n_obs, max_cells, replace=False))
    ]
reference = reference.copy()
reference.obs["annotated type"] = reference.obs["label"].astype("category")
sc.pp.neighbors(reference, use_rep="X_scquery", random_state=seed)
sc.tl.umap(reference, random_state=seed)
colors = ["annotated type"] + (["dataset"] if reference.obs["dataset"].nunique() > 1 else [])
# The model's types in the order every query's prediction lists them (scquery.query), so each keeps
# the colour the queries store with their prediction (uns['scquery_prediction_colors']).
palette = scq.pl.palette([*bundle.classes, *reference.obs["annotated type"].cat.categories])
fig = scq.pl.umap(reference, color=colors, palette=palette, show=False)
save_figure(fig, snakemake.output.umap)
