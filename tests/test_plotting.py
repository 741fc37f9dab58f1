"""scq.pl: one palette across panels and plots, Unknown grey, square confusion matrices; the scores."""

import itertools

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
    assert ax.get_title() == str(scq.score(queried, "bulk_labels"))  # three-decimal macro-F1, as everywhere
    assert "macro-F1 0." in ax.get_title() and len(ax.get_title().split("macro-F1 ")[1].split(" ")[0]) == 5
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


def test_summary_legend_leaves_the_last_tick_clear(queried):
    # One bar and many types: the legend is taller than the axes and reaches down past the tick labels.
    fig = scq.pl.summary(scq.summarize(queried), show=False)
    fig.canvas.draw()
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    last = [label for label in ax.get_xticklabels() if label.get_text() == "100%"][0]
    tick, legend = last.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
    assert tick.x1 < legend.x0, (tick, legend)
    plt.close(fig)


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


def test_plain_scanpy_gets_the_same_colours_through_the_palette_colors_gives(queried):
    queried.obs["renamed"] = queried.obs["bulk_labels"].astype(str).replace({"Dendritic": "DC"})
    plain = queried.copy()
    plain.uns["renamed_colors"] = ["#000000"] * plain.obs["renamed"].nunique()  # the file's own colours
    palette = scq.pl.colors(plain, "renamed")
    fig = sc.pl.umap(
        plain, color=["scquery_prediction", "renamed"], palette=palette, show=False, return_fig=True
    )
    predicted, known = (legend_colors(ax) for ax in fig.axes if ax.get_legend() is not None)
    shared = set(predicted) & set(known)
    assert shared and all(predicted[name] == known[name] for name in shared)
    assert known["DC"] not in predicted.values()  # a name only the known types hold has its own colour
    plt.close(fig)


#: Machado, Oliveira & Fernandes (2009): full deuteranopia and protanopia, on linear RGB.
SIMULATED = {
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.01182, 0.04294, 0.968881]]
    ),
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
}


def _lab(linear):
    """CIELAB (D65) of a linear-RGB colour."""
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    xyz = xyz / [0.95047, 1.0, 1.08883]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _ciede2000(first, second):
    """The CIEDE2000 colour difference of two CIELAB colours (Sharma, Wu & Dalal 2005)."""
    (l1, a1, b1), (l2, a2, b2) = first, second
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = h2 - h1 - 360 * np.sign(h2 - h1) * (abs(h2 - h1) > 180)
    dl, dc, dhh = l2 - l1, c2 - c1, 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    h_mean = (h1 + h2) / 2 + 180 * (abs(h1 - h2) > 180)
    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    sl = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    sc_, sh = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    rt = (
        -2
        * np.sqrt(c_mean**7 / (c_mean**7 + 25**7))
        * np.sin(np.radians(60 * np.exp(-(((h_mean - 275) / 25) ** 2))))
    )
    return float(np.sqrt((dl / sl) ** 2 + (dc / sc_) ** 2 + (dhh / sh) ** 2 + rt * (dc / sc_) * (dhh / sh)))


def test_ciede2000_matches_the_published_test_data():
    # Sharma, Wu & Dalal (2005), table 1: pairs 1, 7 and 17
    assert _ciede2000((50, 2.6772, -79.7751), (50, 0, -82.7485)) == pytest.approx(2.0425, abs=1e-4)
    assert _ciede2000((50, 0, 0), (50, -1, 2)) == pytest.approx(2.3669, abs=1e-4)
    assert _ciede2000((50, 2.5, 0), (73, 25, -18)) == pytest.approx(27.1492, abs=1e-4)


def test_type_colours_stay_apart_also_for_colour_blind_readers():
    from scquery.palettes import COLORS

    linear = [np.array(mcolors.to_rgb(c)) for c in COLORS]
    linear = [np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) for c in linear]
    for view, least in (("normal", 15), ("deuteranopia", 10), ("protanopia", 10)):
        seen = [c if view == "normal" else np.clip(SIMULATED[view] @ c, 0, 1) for c in linear]
        for i, j in itertools.combinations(range(len(seen)), 2):
            difference = _ciede2000(_lab(seen[i]), _lab(seen[j]))
            assert difference >= least, (view, COLORS[i], COLORS[j], difference)


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
