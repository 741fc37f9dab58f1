"""Embedding new data with a trained bundle: `scquery.embed.embed`."""

import dataclasses

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from scquery.embed import compute_embedding, embed, encode
from scquery.errors import ScqueryError
from scquery.imputation import IMPUTER_KEY, Imputer
from scquery.options import InputOptions


@pytest.fixture
def query(split):
    query = split[1].copy()
    query.layers["counts_like"] = query.X.copy()
    query.obsm["X_other"] = np.arange(query.n_obs * 2, dtype=float).reshape(-1, 2)
    return query


def test_embed_writes_embedding_and_keeps_everything_else(bundle, query):
    before = query.copy()
    assert embed(query, bundle) is None
    assert query.obsm["X_scquery"].shape == (query.n_obs, 16)
    assert query.obsm["X_scquery"].dtype == np.float32
    info = query.uns["scquery"]
    assert info["model_id"] == bundle.model_id
    assert info["overlap"]["fraction"] == 1.0
    assert info["values"] == {"values": "normalized", "log_base": "e", "assumed_target_sum": 1e4}
    assert set(info) >= {"params", "versions"}
    assert (query.X != before.X).nnz == 0
    assert list(query.var_names) == list(before.var_names)
    assert query.obs.equals(before.obs)
    assert query.var.equals(before.var)
    assert (query.layers["counts_like"] != before.layers["counts_like"]).nnz == 0
    np.testing.assert_array_equal(query.obsm["X_other"], before.obsm["X_other"])
    assert set(query.uns) - {"scquery"} == set(before.uns) - {"scquery"}


def test_embed_copy_leaves_the_input_alone(bundle, query):
    embedded = embed(query, bundle, key_added="mine", copy=True)
    assert "X_mine" not in query.obsm and "X_mine" in embedded.obsm
    assert embedded.uns["mine"]["model_id"] == bundle.model_id and "scquery" in embedded.uns
    assert query.uns["scquery"] == {"source": "scanpy.datasets.pbmc68k_reduced (pbmc68k_heldout)"}


def test_reference_cells_embed_as_in_the_bundle(bundle, split):
    reference = split[0][:60].copy()
    embedding, probabilities, _, _ = compute_embedding(reference, bundle)
    stored = bundle.reference[reference.obs_names].obsm["X_scquery"]
    np.testing.assert_allclose(embedding, stored, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities.shape == (60, len(bundle.classes))


def test_chunks_give_the_whole_result(bundle, query):
    whole, _, _, _ = compute_embedding(query, bundle)
    chunked, _, _, _ = compute_embedding(query, bundle, InputOptions(batch_size=7))
    np.testing.assert_allclose(whole, chunked, atol=1e-5)


def test_missing_genes_are_read_at_their_mean_over_the_reference_types(bundle, query, caplog):
    rng = np.random.default_rng(0)
    dropped = rng.choice(query.n_vars, size=query.n_vars // 10, replace=False)
    kept = np.setdiff1d(np.arange(query.n_vars), dropped)
    partial = query[:, rng.permutation(kept)].copy()  # genes missing and in another order
    with caplog.at_level("INFO", logger="scquery"):
        embed(partial, bundle)
    overlap = partial.uns["scquery"]["overlap"]
    shared = len(set(bundle.genes) & set(partial.var_names))
    said = f"; the other {len(bundle.genes) - shared:,} read at their mean over the reference's types"
    assert said in caplog.text
    assert overlap["n_shared"] == shared < len(bundle.genes)
    assert overlap["fraction"] == pytest.approx(shared / len(bundle.genes))
    _, _, processed, alignment = compute_embedding(partial, bundle)
    missing = ~alignment.shared
    assert missing.sum() == len(bundle.genes) - shared and processed[:, missing].nnz == 0  # zero-filled
    levels = np.asarray(bundle.reference.uns["profiles"]["means"])[:, missing].mean(axis=0)
    assert levels.max() > 0
    filled = processed.toarray()
    filled[:, missing] = levels
    expected, _ = encode(sp.csr_matrix(filled), bundle, 8192)
    np.testing.assert_allclose(partial.obsm["X_scquery"], expected, atol=1e-5)
    zero_filled, _ = encode(processed, bundle, 8192)
    assert np.abs(zero_filled - expected).max() > 1e-3

    # A bundle saved before its profiles held means reads them as 0, as it did.
    reference = bundle.reference.copy()
    reference.uns["profiles"] = {k: v for k, v in reference.uns["profiles"].items() if k != "means"}
    older = dataclasses.replace(bundle, reference=reference)
    embedding, _, _, _ = compute_embedding(partial, older)
    np.testing.assert_allclose(embedding, zero_filled, atol=1e-5)


def test_missing_genes_are_rebuilt_by_the_kept_autoencoder(split, small_config, caplog, tmp_path):
    """With `rebuild_missing` the bundle keeps its autoencoder (saved, reloaded and extended with it),
    and a query's missing genes, rebuilt from the genes it holds, lie nearer the values the cells hold
    than the genes' mean over the types; the measured genes are not touched. (Pretrained long enough to
    rebuild cells: the session's small model is not.)"""
    from scquery.bundle import load_bundle
    from scquery.extend import extend
    from scquery.train import train

    config = {**small_config, "pretrain_epochs": 20, "rebuild_missing": True}
    bundle = load_bundle(train(split[0], label_key="bulk_labels", config=config, seed=0).save(tmp_path / "m"))
    query = split[1]
    dropped = np.random.default_rng(0).choice(query.n_vars, size=query.n_vars // 10, replace=False)
    partial = query[:, np.setdiff1d(np.arange(query.n_vars), dropped)].copy()
    with caplog.at_level("INFO", logger="scquery"):
        embedding, _, processed, alignment = compute_embedding(partial, bundle)
    missing = ~alignment.shared
    assert f"; the other {missing.sum():,} rebuilt from them by the pretrained autoencoder" in caplog.text
    levels = np.asarray(bundle.reference.uns["profiles"]["means"])[:, missing].mean(axis=0)
    imputer = Imputer(np.flatnonzero(missing), levels, bundle.reference.uns[IMPUTER_KEY])
    rebuilt = imputer.fill(processed.toarray())
    np.testing.assert_array_equal(rebuilt[:, ~missing], processed[:, ~missing].toarray())
    np.testing.assert_allclose(embedding, encode(sp.csr_matrix(rebuilt), bundle, 8192)[0], atol=1e-5)
    _, _, whole, _ = compute_embedding(query, bundle)  # the same cells with every gene
    held = whole[:, missing].toarray()
    assert np.abs(rebuilt[:, missing] - held).mean() < 0.95 * np.abs(levels - held).mean()
    extended = extend(bundle, split[1][:20].copy(), label_key="bulk_labels")
    kernel = extended.reference.uns[IMPUTER_KEY]["kernel"]  # the model's, unchanged
    np.testing.assert_array_equal(kernel, bundle.reference.uns[IMPUTER_KEY]["kernel"])


def test_no_shared_genes_fails_clearly(bundle, query):
    query.var_names = [f"other_{i}" for i in range(query.n_vars)]
    with pytest.raises(ScqueryError, match="shares no genes"):
        embed(query, bundle)
    assert "X_scquery" not in query.obsm


def test_embedding_feeds_scanpy_and_h5ad(bundle, query, tmp_path):
    from scquery.outputs import write_h5ad

    embed(query, bundle)
    sc.pp.neighbors(query, use_rep="X_scquery", random_state=0)
    sc.tl.umap(query, random_state=0)
    assert query.obsm["X_umap"].shape == (query.n_obs, 2)
    write_h5ad(query, tmp_path / "embedded.h5ad")
    back = ad.read_h5ad(tmp_path / "embedded.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scquery"], query.obsm["X_scquery"])
    assert back.uns["scquery"]["model_id"] == bundle.model_id
