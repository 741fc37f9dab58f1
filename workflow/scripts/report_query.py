"""Report figures of one query: the joint UMAP with the reference, and the confusion matrix of the
known against the predicted cell types."""

from common import log_to

log_to(snakemake.log[0])

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402

from scquery.bundle import load_bundle  # noqa: E402

query = ad.read_h5ad(snakemake.input.data)
reference = load_bundle(snakemake.input.bundle).reference
label_key = snakemake.params.label_key
known = label_key is not None and label_key in query.obs
name = snakemake.wildcards.query

# Reference cells show their label, query cells their prediction (and their known label).
obs = pd.concat(
    [
        pd.DataFrame({"source": "reference", "cell type": reference.obs["label"].astype(str).to_numpy()}),
        pd.DataFrame(
            {
                "source": name,
                "cell type": query.obs["scquery_prediction"].astype(str).to_numpy(),
                **({"known cell type": query.obs[label_key].astype(str).to_numpy()} if known else {}),
            }
        ),
    ],
    ignore_index=True,
)
obs.index = obs.index.astype(str)
joint = ad.AnnData(
    obs=obs.astype("category"),
    obsm={"X_scquery": np.vstack([reference.obsm["X_scquery"], query.obsm["X_scquery"]])},
)
sc.pp.neighbors(joint, use_rep="X_scquery", random_state=snakemake.params.seed)
sc.tl.umap(joint, random_state=snakemake.params.seed)
colors = ["source", "cell type"] + (["known cell type"] if known else [])
titles = ["reference and query", "reference label / query prediction", "query: known cell type"]
fig = sc.pl.umap(
    joint,
    color=colors,
    title=titles[: len(colors)],
    show=False,
    return_fig=True,
    wspace=0.6,
    na_color="lightgrey",
)
fig.savefig(snakemake.output.umap, dpi=120, bbox_inches="tight")

if snakemake.output.get("confusion"):
    fig, ax = plt.subplots(figsize=(8, 7))
    if known:
        true = query.obs[label_key].astype(str).rename("known")
        predicted = query.obs["scquery_prediction"].astype(str).rename("predicted")
        # rows: known types; columns: predicted types (and Unknown); each row sums to 1
        table = pd.crosstab(true, predicted, normalize="index")
        image = ax.imshow(table.to_numpy(), cmap="Blues", vmin=0, vmax=1)
        for (row, column), share in np.ndenumerate(table.to_numpy()):
            color = "white" if share > 0.5 else "black"
            ax.text(column, row, f"{share:.2f}", ha="center", va="center", color=color, fontsize=7)
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=90)
        ax.set_yticks(range(table.shape[0]), table.index)
        fig.colorbar(image, ax=ax, shrink=0.7, label="share of the known type")
        ax.set(
            title=f"{name}: accuracy {(true == predicted).mean():.3f}, "
            f"{(predicted == 'Unknown').mean():.1%} Unknown",
            xlabel="predicted (scquery)",
            ylabel=f"known ({label_key})",
        )
    else:
        ax.text(
            0.5,
            0.5,
            f"{name} has no column {label_key!r}:\nno known cell types to compare.",
            ha="center",
            va="center",
        )
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(snakemake.output.confusion, dpi=120)
