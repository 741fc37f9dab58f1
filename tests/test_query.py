"""Nearest-neighbour cell-type queries: index, vote, rejection, summary, extension."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scquery.errors import ScqueryError
from scquery.query import UNKNOWN, extend, query, summarize, vote
from scquery.train import train

HELD_OUT = "CD19+ B"


@pytest.fixture(scope="module")
def queried(bundle, split):
    adata = split[1].copy()
    matches = query(adata, bundle, k=15)
    return adata, matches


@pytest.fixture(scope="module")
def without_b(split, small_config):
    """A model whose reference lacks the B cells (no pretraining: measured to reject them best)."""
    reference = split[0][split[0].obs["bulk_labels"] != HELD_OUT].copy()
    return train(reference, label_key="bulk_labels", config={**small_config, "pretrain": False}, seed=0)


def test_predictions_agree_with_held_out_labels(queried):
    adata, _ = queried
    truth = adata.obs["bulk_labels"].astype(str)
    predicted = adata.obs["scquery_prediction"].astype(str)
    accepted = predicted != UNKNOWN
    # measured with seeds 0-2: 0.74-0.81 overall (Unknown counted wrong), 0.86-0.89 when accepted
    assert (predicted == truth).mean() > 0.65
    assert (predicted == truth)[accepted].mean() > 0.78
    assert (adata.obs["scquery_classifier"].astype(str) == truth).mean() > 0.7


def test_query_writes_documented_fields(queried, bundle):
    adata, matches = queried
    obs = adata.obs
    assert UNKNOWN in obs["scquery_prediction"].cat.categories
    assert set(obs["scquery_classifier"].cat.categories) == set(bundle.classes)
    for column in ("scquery_confidence", "scquery_classifier_probability"):
        assert obs[column].between(0, 1).all()
    assert adata.obsm["X_scquery"].shape == (adata.n_obs, 16)
    params = adata.uns["scquery"]["query_params"]
    assert params["k"] == 15 and params["search"] == "exact"
    assert params["n_unknown"] == (obs["scquery_prediction"] == UNKNOWN).sum()
    low = obs["scquery_confidence"] < params["min_agreement"]
    assert (obs["scquery_prediction"][low] == UNKNOWN).all()
    assert list(matches.columns) == [
        "query_cell", "rank", "reference_cell", "distance", "reference_label", "reference_dataset"
    ]  # fmt: skip
    assert len(matches) == adata.n_obs * 15
    per_cell = matches["distance"].to_numpy().reshape(adata.n_obs, 15)
    assert (np.diff(per_cell, axis=1) >= 0).all()
    np.testing.assert_allclose(obs["scquery_distance"], per_cell.mean(axis=1), rtol=1e-5)
    first = matches[matches["rank"] == 1]
    assert (first["reference_label"].to_numpy() == obs["scquery_nearest_label"].to_numpy()).all()
    too_far = per_cell[:, 0] > params["distance_threshold"]
    assert too_far.any() and (obs["scquery_prediction"][too_far] == UNKNOWN).all()


def test_a_reference_cell_finds_itself_first(bundle, split):
    copies = split[0][:25].copy()
    matches = query(copies, bundle, k=5)
    first = matches[matches["rank"] == 1]
    assert (first["reference_cell"].to_numpy() == copies.obs_names.to_numpy()).all()
    assert first["distance"].max() < 1e-3


def test_held_out_type_comes_back_unknown(without_b, split):
    adata = split[1].copy()
    query(adata, without_b)
    predicted = adata.obs["scquery_prediction"].astype(str)
    held = (adata.obs["bulk_labels"] == HELD_OUT).to_numpy()
    # measured with training seeds 0-3: 0.66-0.79 of B cells rejected, 4-12 % of the others
    assert (predicted[held] == UNKNOWN).mean() > 0.5
    assert (predicted[~held] == UNKNOWN).mean() < 0.2


def test_extended_reference_finds_the_new_type(without_b, split, tmp_path):
    new_cells = split[0][split[0].obs["bulk_labels"] == HELD_OUT].copy()
    extended = extend(without_b, new_cells, label_key="bulk_labels", path=tmp_path / "model")
    assert extended.reference.n_obs == without_b.reference.n_obs + new_cells.n_obs
    assert without_b.reference.n_obs + new_cells.n_obs == extended.reference.obs_names.nunique()
    assert (extended.reference.obs["dataset"] == "pbmc68k_reference").all()
    assert HELD_OUT not in extended.classes
    adata = split[1].copy()
    matches = query(adata, extended, bundle_path=tmp_path / "model")
    held = (adata.obs["bulk_labels"] == HELD_OUT).to_numpy()
    assert (adata.obs["scquery_prediction"][held] == HELD_OUT).mean() > 0.7
    assert set(new_cells.obs_names) & set(matches["reference_cell"])
    saved = json.loads((tmp_path / "model" / "index.json").read_text())
    assert saved["n_cells"] == extended.reference.n_obs


def test_vote_weighs_near_neighbours_more():
    distances = np.array([[0.1, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    codes = np.array([[0, 1, 1], [2, 2, 1], [1, 1, 1]])
    winner, share = vote(distances, codes, 3)
    assert winner.tolist() == [0, 2, 1]
    weights = np.exp(-distances[0] / distances[0].mean())
    assert share[0] == pytest.approx(weights[0] / weights.sum())
    assert share[1] == pytest.approx(2 / 3) and share[2] == pytest.approx(1.0)


def test_summary_per_dataset_and_cluster(queried):
    adata, matches = queried
    summary = summarize(adata, groupby="louvain", matches=matches)
    assert len(summary) == adata.obs["louvain"].nunique()
    assert summary["n_cells"].sum() == adata.n_obs
    fractions = summary.filter(like="fraction ")
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0)
    assert (summary["dataset"] == "pbmc68k_query").all()
    assert summary["nearest_label_share"].between(0, 1).all()
    cluster = summary.iloc[0]
    cells = adata.obs_names[adata.obs["louvain"].astype(str) == cluster["louvain"]]
    labels = matches.loc[matches["query_cell"].isin(cells), "reference_label"]
    assert cluster["nearest_label"] == labels.value_counts().idxmax()
    overall = summarize(adata)
    assert len(overall) == 1 and overall["n_cells"].item() == adata.n_obs


def test_bad_parameters_fail_clearly(bundle, split):
    adata = split[1][:10].copy()
    with pytest.raises(ScqueryError, match="k must"):
        query(adata, bundle, k=0)
    with pytest.raises(ScqueryError, match="run the query"):
        summarize(adata)
    with pytest.raises(ScqueryError, match="louvain_x"):
        query(adata, bundle)
        summarize(adata, groupby="louvain_x")
    with pytest.raises(ScqueryError, match="label column"):
        extend(bundle, adata, label_key="missing")


def test_query_table_round_trips(queried, bundle, tmp_path):
    from scquery.io import write_table

    adata, matches = queried
    write_table(matches, tmp_path / "matches.tsv")
    back = pd.read_csv(tmp_path / "matches.tsv", sep="\t")
    assert list(back.columns) == [
        "query_cell", "rank", "reference_cell", "distance", "reference_label", "reference_dataset",
    ]  # fmt: skip
    # Every value comes back, cell names as text, distances to float precision.
    for column in ("query_cell", "reference_cell", "reference_label", "reference_dataset"):
        assert back[column].astype(str).tolist() == matches[column].astype(str).tolist()
    assert back["rank"].tolist() == matches["rank"].tolist()
    np.testing.assert_allclose(back["distance"], matches["distance"], rtol=1e-6)
    # What the table means: k rows per query cell, ranked by distance, naming real reference cells
    # with their labels.
    assert back.groupby("query_cell")["rank"].apply(list).map(lambda r: r == list(range(1, 16))).all()
    assert set(back["query_cell"]) == set(adata.obs_names)
    assert (back.groupby("query_cell")["distance"].diff().dropna() >= -1e-6).all()
    labels = bundle.reference.obs["label"].astype(str)
    assert (back["reference_label"].astype(str).to_numpy() == labels[back["reference_cell"]].to_numpy()).all()
    assert [path.name for path in tmp_path.iterdir()] == ["matches.tsv"]  # no temporary file left


def test_cli_embed_query_and_extend(bundle, without_b, split, tmp_path):
    from scquery.bundle import load_bundle, save_bundle
    from scquery.cli import main

    model = save_bundle(bundle, tmp_path / "model")
    first, second = split[1][:40].copy(), split[1][40:90].copy()
    first.write_h5ad(tmp_path / "a.h5ad")
    second.write_h5ad(tmp_path / "b.h5ad")
    assert main(["embed", str(model), str(tmp_path / "a.h5ad"), "--out", str(tmp_path / "e.h5ad")]) == 0
    assert ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_scquery"].shape == (40, 16)
    args = ["query", str(model), str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")]
    args += ["--out", str(tmp_path / "q.h5ad"), "--k", "5", "--matches", str(tmp_path / "m.tsv")]
    args += ["--summary", str(tmp_path / "s.tsv"), "--groupby", "louvain", "-q"]
    assert main(args) == 0
    result = ad.read_h5ad(tmp_path / "q.h5ad")
    assert set(result.obs["dataset"]) == {"pbmc68k_query"}  # the data's own column, kept
    assert set(result.obs["scquery_dataset"]) == {"a", "b"}  # the file names beside it
    assert "scquery_prediction" in result.obs
    assert result.uns["scquery"]["query_params"]["k"] == 5
    matches = pd.read_csv(tmp_path / "m.tsv", sep="\t")
    assert len(matches) == 90 * 5 and set(matches["rank"]) == set(range(1, 6))
    summary = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert set(summary["dataset"]) == {"pbmc68k_query"} and summary["n_cells"].sum() == 90
    assert (model / "index.json").is_file()

    small = save_bundle(without_b, tmp_path / "small")
    b_cells = split[0][split[0].obs["bulk_labels"] == HELD_OUT].copy()
    b_cells.write_h5ad(tmp_path / "b_cells.h5ad")
    out = tmp_path / "extended"
    args = ["extend", str(small), str(tmp_path / "b_cells.h5ad"), "--label-key", "bulk_labels"]
    assert main(args) == 2  # neither --out nor --overwrite
    assert main([*args, "--out", str(out)]) == 0
    extended = load_bundle(out)
    assert extended.reference.n_obs == without_b.reference.n_obs + b_cells.n_obs
    assert HELD_OUT in set(extended.reference.obs["label"])
    assert main(["query", str(model), str(tmp_path / "missing.h5ad"), "--out", "x.h5ad"]) == 2
