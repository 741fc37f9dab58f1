"""Report of one query: headline scores (JSON, for the overview), the joint UMAP with the reference,
and, when its cell types are known, the per-type scores and the confusion matrix; the summary as a
table and as bars."""

from common import html_table, log_to, save_figure

log_to(snakemake.log[0])

import html  # noqa: E402
import json  # noqa: E402

import anndata as ad  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# Each UMAP panel: three in a row and their legend beneath fit the report's width unshrunk.
plt.rcParams["figure.figsize"] = (3.2, 3.2)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402

import scquery as scq  # noqa: E402
from scquery import evaluate  # noqa: E402

name, seed = snakemake.wildcards.query, snakemake.params.seed
query = ad.read_h5ad(snakemake.input.data)
reference = scq.load(snakemake.input.bundle).reference
truth = snakemake.params.label_key if snakemake.params.label_key in query.obs else None

scores = {"query": name, **evaluate.score(query, truth)}
with open(snakemake.output.scores, "w") as handle:
    json.dump(scores, handle, indent=1)

# One palette for every figure of the report: the colours the query stored with its prediction (the
# model's types, as in the reference's UMAP), then the query's own names.
palette = scq.pl.colors(query, *([truth] if truth else []))

# The joint UMAP of (at most `max_cells` of) the reference and the query cells: each panel colours
# one side, the other is light grey underneath.
rng = np.random.default_rng(seed)
max_cells = snakemake.params.max_cells
parts = {"reference": reference, name: query}
parts = {
    side: part[np.sort(rng.choice(part.n_obs, max_cells, replace=False))] if part.n_obs > max_cells else part
    for side, part in parts.items()
}
reference_part, query_part = parts["reference"], parts[name]
n_ref = reference_part.n_obs
columns = {
    "reference: annotated type": reference_part.obs["label"].astype(str).tolist() + [None] * query_part.n_obs,
    f"{name}: predicted type": [None] * n_ref + query_part.obs["scquery_prediction"].astype(str).tolist(),
}
if truth:
    columns[f"{name}: known type ({truth})"] = [None] * n_ref + query_part.obs[truth].astype(str).tolist()
joint = ad.AnnData(
    obs=pd.DataFrame(columns, index=[f"cell{i}" for i in range(n_ref + query_part.n_obs)]),
    obsm={"X_scquery": np.vstack([reference_part.obsm["X_scquery"], query_part.obsm["X_scquery"]])},
)
sc.pp.neighbors(joint, use_rep="X_scquery", random_state=seed)
sc.tl.umap(joint, random_state=seed)
# The panels in one row share one palette, so one legend beneath them names every type they show.
titles = [column.replace(": ", ":\n") for column in columns]  # two lines: the panels are narrow
fig = scq.pl.umap(
    joint,
    color=list(columns),
    title=titles,
    palette=palette,
    ncols=len(columns),
    legend_loc=None,
    wspace=0.08,
    show=False,
)
shown = [name for name in palette if any((joint.obs[column] == name).any() for column in columns)]
handles = [Line2D([], [], ls="", marker="o", markersize=7, color=palette[name], label=name) for name in shown]
fig.legend(
    handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncols=3, frameon=False, fontsize=9
)
save_figure(fig, snakemake.output.umap)

summary = pd.read_csv(snakemake.input.summary, sep="\t")
save_figure(scq.pl.summary(summary, palette=palette, show=False), snakemake.output.summary_plot)
shown = summary.rename(columns=lambda c: c.removeprefix("fraction ")).rename(
    columns={
        "n_cells": "cells",
        "mean_distance": "mean distance to the neighbours",
        "nearest_dataset": "nearest reference dataset",
        "nearest_dataset_share": "its share of the neighbours",
        "nearest_label": "nearest reference type",
        "nearest_label_share": "share of the neighbours",
    }
)
predicted = [c.removeprefix("fraction ") for c in summary.columns if c.startswith("fraction ")]
html_table(
    shown,
    snakemake.output.summary_table,
    caption=f"{name}: the share of each predicted type per dataset"
    + (f" and known type ({truth})" if truth else "")
    + ", the reference dataset and type most often among the cells' neighbours, and the cells' mean "
    "distance to their nearest reference cells in the embedding (lower: closer to the reference; "
    "compare queries of one model)",
    formats={
        **{c: lambda v: f"{v:.0%}" if v else "" for c in predicted},
        "its share of the neighbours": "{:.0%}",
        "share of the neighbours": "{:.0%}",
        "mean distance to the neighbours": "{:.3f}",
    },
)

if snakemake.output.get("confusion") and not truth:  # configured, but this query has no such column
    missing = f"{name} has no column {snakemake.params.label_key!r}: no known cell types to compare."
    fig = plt.figure(figsize=(6, 1))
    fig.text(0.5, 0.5, missing, ha="center", va="center")
    save_figure(fig, snakemake.output.confusion)
    with open(snakemake.output.per_type, "w") as handle:
        handle.write(f"<p>{html.escape(missing)}</p>")
elif truth:
    save_figure(scq.pl.confusion(query, truth, show=False), snakemake.output.confusion)
    table = evaluate.per_type(query, truth).reset_index()
    html_table(
        table,
        snakemake.output.per_type,
        caption=f"{name}: accuracy {scores['accuracy']:.1%}, macro-F1 {scores['macro_f1']:.3f}, "
        f"{scores['unknown']:.1%} Unknown; per cell type",
        formats={"precision": "{:.3f}", "recall": "{:.3f}", "f1": "{:.3f}", "unknown": "{:.1%}"},
    )
