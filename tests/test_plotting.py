"""scq.pl: one palette across panels and plots, Unknown grey, square confusion matrices; the scores."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scanpy as sc  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score, precision_score  # noqa: E402

import scquery as scq  # noqa: E402
from scquery import evaluate  # noqa: E402
from scquery.plotting import BACKGROUND_COLOR, UNKNOWN_COLOR  # noqa: E402
from scquery.query import UNKNOWN  # noqa: E402


@pytest.fixture(scope="module")
def queried(bundle, split):
    adata = split[1].copy()
    scq.query(adata, bundle)
    sc.pp.neighbors(adata, use_rep="X_scquery", random_state=0)
    sc.tl.umap(adata, random_state=0)
    return adata


def legend_colors(ax):
    """Legend label → the colour of its marker."""
    legend = ax.get_legend()
    colors = {}
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        face = handle.get_facecolor()
        colors[text.get_text()] = mcolors.to_hex(face[0] if np.ndim(face) == 2 else face)
    return colors


def test_palette_follows_the_given_order_and_greys_unknown():
    colors = scq.pl.palette(["B", UNKNOWN, "T", "NK"])
    assert list(colors) == ["B", "T", "NK", UNKNOWN]
    assert colors[UNKNOWN] == UNKNOWN_COLOR
    assert len(set(colors.values())) == 4
    assert scq.pl.palette(["B", "T", "NK", "Mono"])["T"] == colors["T"]  # more types, same colours


def test_panels_share_one_palette_and_list_only_present_types(queried, bundle):
    queried.obs["half"] = queried.obs["bulk_labels"].where(np.arange(queried.n_obs) % 2 == 0)  # NaN: grey
    fig = scq.pl.umap(queried, color=["scquery_prediction", "bulk_labels", "half"], show=False)
    axes = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(axes) == 3
    legends = [legend_colors(ax) for ax in axes]
    predicted = set(queried.obs["scquery_prediction"].astype(str))
    assert set(legends[0]) == predicted  # only the types shown, not all the model's classes
    assert set(legends[1]) == set(queried.obs["bulk_labels"].astype(str))
    for name in set(legends[0]) & set(legends[1]):
        assert legends[0][name] == legends[1][name]
    if UNKNOWN in legends[0]:
        assert legends[0][UNKNOWN] == UNKNOWN_COLOR
    # the default palette follows all the model's types, so any query gets the same colours
    expected = scq.pl.palette(bundle.classes)
    assert all(legends[1][name] == expected[name] for name in legends[1])
    background = [c.get_facecolors() for c in axes[2].collections if len(c.get_facecolors())]
    assert mcolors.to_hex(background[0][0]) == BACKGROUND_COLOR  # NaN cells drawn first, light grey
    assert "nan" not in legends[2]
    plt.close(fig)


def test_scores_match_scikit_learn(queried):
    scores = scq.score(queried, "bulk_labels")
    known, predicted = queried.obs["bulk_labels"].astype(str), queried.obs["scquery_prediction"].astype(str)
    assert scores["cells"] == queried.n_obs
    assert scores["accuracy"] == pytest.approx(accuracy_score(known, predicted))
    labels = sorted(set(known))
    assert scores["macro_f1"] == pytest.approx(f1_score(known, predicted, labels=labels, average="macro"))
    assert scores["unknown"] == pytest.approx((predicted == UNKNOWN).mean())
    assert scores["predicted_types"] == len(set(predicted) - {UNKNOWN})
    table = evaluate.per_type(queried, "bulk_labels")
    assert UNKNOWN not in table.index
    for name in table.index[table["predicted"] > 0]:
        assert table.loc[name, "precision"] == pytest.approx(
            precision_score(known == name, predicted == name)
        )
    assert table["cells"].sum() == queried.n_obs


def test_confusion_is_square_with_unknown_last(queried):
    shares = evaluate.confusion(queried, "bulk_labels")
    types = list(shares.index)
    assert list(shares.columns) == types + [UNKNOWN]
    order = list(queried.obs["scquery_prediction"].cat.categories)  # the model's types first, in order
    assert [t for t in types if t in order] == [t for t in order if t in types]
    np.testing.assert_allclose(shares.sum(axis=1).dropna(), 1.0)
    counts = evaluate.confusion(queried, "bulk_labels", normalize=False)
    correct = np.trace(counts.to_numpy()[:, :-1])
    assert correct / queried.n_obs == pytest.approx(scq.score(queried, "bulk_labels")["accuracy"])
    fig = scq.pl.confusion(queried, "bulk_labels", show=False)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == types + [UNKNOWN]
    assert len(ax.get_yticklabels()) == len(types)
    assert "accuracy" in ax.get_title() and "Unknown" in ax.get_title()
    plt.close(fig)


def test_confusion_orders_a_query_with_other_type_names(queried):
    renamed = queried.copy()
    renamed.obs["truth"] = renamed.obs["bulk_labels"].astype(str).replace({"Dendritic": "DC"})
    shares = evaluate.confusion(renamed, "truth")
    assert shares.index[-1] == "DC" and shares.columns[-2:].tolist() == ["DC", UNKNOWN]
    assert shares.loc["DC", "DC"] == 0.0


def test_summary_bars_use_the_same_colours(queried):
    fig = scq.pl.summary(queried, groupby="bulk_labels", show=False)
    ax = fig.axes[0]
    colors = legend_colors(ax)
    expected = scq.pl.palette(queried.obs["scquery_prediction"].cat.categories)
    assert all(colors[name] == expected[name] for name in colors)
    assert list(colors)[-1] == UNKNOWN or UNKNOWN not in colors
    assert len(ax.get_yticklabels()) == queried.obs["bulk_labels"].nunique()
    plt.close(fig)
    table = scq.summarize(queried)
    assert scq.pl.summary(table, show=False).axes[0].get_yticklabels()[0].get_text().endswith("cells)")
    plt.close("all")


def test_history_plots_every_stage(bundle):
    fig = scq.pl.history(bundle, show=False)
    assert [ax.get_title() for ax in fig.axes] == [
        "Greedy denoising pretraining",
        "Classifier loss",
        "Classifier accuracy",
    ]
    assert len(fig.axes[0].get_lines()) == len(bundle.history["pretrain"])
    plt.close(fig)


def test_type_order_keeps_category_order_then_sorts_new_names():
    adata = sc.AnnData(
        obs=pd.DataFrame(
            {
                "p": pd.Categorical(["b", "a", UNKNOWN], categories=["b", "a", "z", UNKNOWN]),
                "t": ["y", "a", "x"],
            },
            index=["c1", "c2", "c3"],
        )
    )
    assert evaluate.type_order(adata, "p", "t", used_only=False) == ["b", "a", "z", "x", "y"]
    assert evaluate.type_order(adata, "p", "t") == ["b", "a", "x", "y"]


def test_a_type_has_one_colour_in_umap_summary_and_scanpy(queried):
    stored = queried.uns["scquery_prediction_colors"]
    categories = list(queried.obs["scquery_prediction"].cat.categories)
    assert len(stored) == len(categories) and stored[categories.index(UNKNOWN)] == UNKNOWN_COLOR
    expected = dict(zip(categories, stored, strict=True))
    umap = scq.pl.umap(queried, color=["bulk_labels", "scquery_prediction"], show=False)
    legends = [legend_colors(ax) for ax in umap.axes if ax.get_legend() is not None]
    bars = legend_colors(scq.pl.summary(queried, show=False).axes[0])
    shown = sc.pl.umap(queried, color="scquery_prediction", show=False, return_fig=True)  # scanpy's own
    for colors in [*legends, bars, legend_colors(shown.axes[0])]:
        assert all(colors[name] == expected[name] for name in colors if name in expected), colors
    # a type only the known labels hold gets a colour no predicted type has
    queried.obs["renamed"] = queried.obs["bulk_labels"].astype(str).replace({"Dendritic": "DC"})
    assert scq.pl.colors(queried, "renamed")["DC"] not in stored
    plt.close("all")


def test_palette_is_legible_on_white_and_greys_only_unknown():
    def luminance(color):
        channels = np.array(mcolors.to_rgb(color))
        linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
        return linear @ [0.2126, 0.7152, 0.0722]

    from scquery.palettes import COLORS

    colors = scq.pl.palette([f"type {i}" for i in range(len(COLORS))])
    contrast = {name: 1.05 / (luminance(c) + 0.05) for name, c in colors.items()}
    assert min(contrast.values()) >= 2.2, contrast  # scanpy's pale pink (#ff9896) has 2.06
    assert len(set(colors.values())) == len(COLORS) + 1
    assert all(len(set(mcolors.to_rgb(c))) > 1 for name, c in colors.items() if name != UNKNOWN)
