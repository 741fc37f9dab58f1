"""Plots of scquery's results, for notebooks and the workflow's report (`scquery.pl`).

Every plot that colours cells by type takes its colours from one palette (`palette`): a type keeps
its colour across panels and plots, Unknown is grey, and cells a panel does not colour (NaN) are
light grey. `query` stores the prediction's colours as scanpy does (`uns['scquery_prediction_colors']`,
aligned with the categories), so `sc.pl` plots use them too, and every plot here starts from them
(`colors`). Like scanpy's, the functions show the figure, or return it with `show=False`.
"""

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from matplotlib.ticker import MaxNLocator

from . import evaluate
from .evaluate import PREDICTION, summarize, type_order
from .labels import UNKNOWN
from .palettes import UNKNOWN_COLOR, palette

__all__ = ["colors", "confusion", "embedding", "history", "palette", "summary", "umap"]

BACKGROUND_COLOR = "#e4e4e4"


def colors(adata, *keys, prediction=PREDICTION) -> dict:
    """The colours every plot of `adata` gives its types: those stored with the prediction
    (`uns[prediction + '_colors']`, written by `query`), then `palette` colours not yet used for the
    other types of the obs columns `keys`, in `evaluate.type_order`."""
    stored = {}
    column, values = adata.obs.get(prediction), adata.uns.get(f"{prediction}_colors")
    if column is not None and isinstance(column.dtype, pd.CategoricalDtype) and values is not None:
        if len(values) == len(column.cat.categories):
            stored = dict(zip(map(str, column.cat.categories), map(str, values), strict=True))
    return _colors(type_order(adata, *keys, used_only=False), stored)


def embedding(adata, *, basis="umap", color=PREDICTION, palette=None, title=None, show=None, **kwargs):
    """Cells on a 2-D embedding (`obsm['X_' + basis]`), one panel per key of `color` (scanpy style).

    The categorical keys share one palette: `palette` (a dict, or the types to give colours in
    order; default: `colors`, the prediction's stored colours, then the other types of all keys), so
    the same type has the same colour in every panel and plot. Unknown is grey; cells without a
    value (NaN) are light grey, drawn underneath and left out of the legend; each legend lists only
    the types its panel shows. Other keyword arguments go to `scanpy.pl.embedding` (e.g. `ncols`,
    `legend_loc`, `size`).

    Returns:
        None, or the figure with `show=False`.
    """
    keys = [color] if isinstance(color, str) else list(color)
    basis = basis if basis in adata.obsm else f"X_{basis}"
    view = ad.AnnData(
        obs=adata.obs[[k for k in keys if k in adata.obs]].copy(), obsm={basis: adata.obsm[basis]}
    )
    categorical = [k for k in view.obs if not pd.api.types.is_numeric_dtype(view.obs[k])]
    types = type_order(view, *categorical, used_only=False)
    shown = _colors(types, palette if palette is not None else colors(adata))
    for key in categorical:
        values = view.obs[key]
        column = pd.Categorical(np.where(values.notna(), values.astype(str), None))
        view.obs[key] = column.reorder_categories(sorted(column.categories, key=list(shown).index))
        view.uns[f"{key}_colors"] = [shown[name] for name in view.obs[key].cat.categories]
    longest = max((len(name) for key in categorical for name in view.obs[key].cat.categories), default=0)
    options = {
        "na_color": BACKGROUND_COLOR,
        "na_in_legend": False,
        "frameon": False,
        "ncols": 2,
        "wspace": 0.2 + 0.08 * longest / plt.rcParams["figure.figsize"][0],  # room for the legend
        **kwargs,
    }
    fig = sc.pl.embedding(view, basis, color=keys, title=title, show=False, return_fig=True, **options)
    return _finish(fig, show)


def umap(adata, **kwargs):
    """`embedding` on the UMAP (`obsm['X_umap']`, from `sc.tl.umap`)."""
    return embedding(adata, basis="umap", **kwargs)


def _colors(types, given=None):
    """The palette of `types`: `given` (a dict, or types to colour first) completed with the others,
    each in a colour `given` does not use."""
    if not isinstance(given, dict):
        return palette([*(given or []), *types])
    names = [name for name in dict.fromkeys(map(str, [*given, *types])) if name != UNKNOWN]
    free = [c for c in palette(names).values() if c not in given.values() and c != UNKNOWN_COLOR]
    free = iter(free * (len(names) // max(len(free), 1) + 1) or [UNKNOWN_COLOR])
    mapping = {name: given[name] if name in given else next(free) for name in names}
    mapping[UNKNOWN] = given.get(UNKNOWN, UNKNOWN_COLOR)
    return mapping


def confusion(adata, truth, *, prediction=PREDICTION, ax=None, show=None):
    """The confusion matrix of the known types (`obs[truth]`) against the predicted ones.

    Rows and columns list the same types in the same order (`evaluate.type_order`), so correct
    predictions lie on the diagonal; Unknown is the last column. Each row is normalised: a cell holds
    the share of the row's known cells predicted as the column's type. The title is the line `score`
    prints (cells, accuracy, macro-F1 to three decimals, share Unknown), as everywhere else.
    """
    shares = evaluate.confusion(adata, truth, prediction=prediction)
    counts = evaluate.confusion(adata, truth, prediction=prediction, normalize=False).sum(axis=1)
    scores = evaluate.score(adata, truth, prediction=prediction)
    n = len(shares)
    if ax is None:
        side = min(max(4.0, 0.42 * n + 2.5), 20.0)
        fig, ax = plt.subplots(figsize=(side + 1.6, side), layout="constrained")
    cmap = plt.get_cmap("Blues").with_extremes(bad="#f4f4f4")  # rows without cells
    image = ax.imshow(shares.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=1)
    if n <= 30:
        for (row, column), share in np.ndenumerate(shares.to_numpy(dtype=float)):
            if share >= 0.005:
                color = "white" if share > 0.6 else "black"
                ax.text(column, row, f"{share:.0%}", ha="center", va="center", color=color, fontsize=7)
    ax.set_xticks(range(n + 1), shares.columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), [f"{name} ({counts[name]:,})" for name in shares.index])
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel="predicted (scquery)", ylabel=f"known ({truth}), cells")
    ax.set_title(str(scores))  # the line `score` prints: the same figures as everywhere else
    ax.figure.colorbar(image, ax=ax, shrink=0.6, label="share of the known type's cells")
    return _finish(ax.figure, show)


def summary(data, *, groupby=None, palette=None, ax=None, show=None):
    """What each dataset (and `groupby` group) is predicted to be: one bar per row of `summarize`,
    split into the shares of the predicted types (Unknown grey, last).

    Args:
        data: a `summarize` table, or an AnnData after `query` (summarized here).
        palette: as in `embedding` (default: `colors` of the data, or of the types in the table).
    """
    if isinstance(data, pd.DataFrame):
        table, stored = data, {}
    else:
        table, stored = summarize(data, groupby=groupby), colors(data, PREDICTION)
    groups = list(table.columns[: table.columns.get_loc("n_cells")])
    groups = [g for g in groups if table[g].nunique() > 1] or groups  # name what differs
    fractions = table[[c for c in table.columns if c.startswith("fraction ")]]
    fractions.columns = [c.removeprefix("fraction ") for c in fractions.columns]
    types = [t for t in fractions.columns if t != UNKNOWN]
    shown = _colors(sorted(types), palette if palette is not None else stored)
    order = sorted(types, key=list(shown).index) + ([UNKNOWN] if UNKNOWN in fractions else [])
    labels = [
        " · ".join(str(row[g]) for g in groups) + f" ({int(row['n_cells']):,} cells)"
        for _, row in table.iterrows()
    ]
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(table)), layout="constrained")
    left = np.zeros(len(table))
    for name in order:
        share = fractions[name].fillna(0).to_numpy()
        ax.barh(
            range(len(table)),
            share,
            left=left,
            color=shown[name],
            label=name,
            edgecolor="white",
            linewidth=0.5,
        )
        left += share
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:.0%}"))
    ax.set_xlabel("share of the cells, by predicted type")
    ax.spines[["top", "right"]].set_visible(False)
    # Two font sizes right of the axes: the last tick's label (100%) reaches past the axes' edge.
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), borderaxespad=2, frameon=False, fontsize="small")
    return _finish(ax.figure, show)


def history(bundle, *, show=None):
    """A model's training curves: each pretrained layer's reconstruction error (before training and
    after each epoch), and the classifier's loss and accuracy on training and validation cells, with
    the epoch whose weights were kept (early stopping) marked."""
    pretrain, classifier = bundle.history["pretrain"], bundle.history["classifier"]
    panels = (["pretrain"] if pretrain else []) + ["loss", "accuracy"]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, layout="constrained"
    )
    axes = dict(zip(panels, axes[0], strict=True))
    for stage in pretrain:
        losses = [stage["initial_loss"], *stage["loss"]]
        name = stage["stage"]  # layer_0, layer_1, …, stacked: numbered from 1 as training logs them
        name = f"layer {int(name.removeprefix('layer_')) + 1}" if name.startswith("layer_") else name
        axes["pretrain"].plot(
            range(len(losses)), losses, marker=".", label=f"{name} (width {stage['width']})"
        )
    if pretrain:
        axes["pretrain"].set(
            title="Greedy denoising pretraining", xlabel="epoch", ylabel="reconstruction MSE"
        )
        axes["pretrain"].legend(fontsize="small", frameon=False)
    for metric in ("loss", "accuracy"):
        for key, style, name in ((metric, "-", "training"), (f"val_{metric}", "--", "validation")):
            if key in classifier:
                values = classifier[key]
                axes[metric].plot(range(1, len(values) + 1), values, style, marker=".", label=name)
        axes[metric].set(title=f"Classifier {metric}", xlabel="epoch", ylabel=metric)
        axes[metric].legend(fontsize="small", frameon=False)
    kept = bundle.kept_epoch if "val_loss" in classifier else None
    for metric in ("loss", "accuracy") if kept else ():
        axes[metric].axvline(kept, color="grey", linestyle=":", linewidth=1, label=f"kept (epoch {kept})")
        axes[metric].legend(fontsize="small", frameon=False)
    for ax in axes.values():
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, show)


def _finish(fig, show):
    if show is False:
        return fig
    plt.show()
    return None
