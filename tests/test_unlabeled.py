"""Unlabelled cells: in the reference (no label) and in extra data, for pretraining only."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scquery.bundle import load_bundle
from scquery.cli import main
from scquery.errors import ScqueryError
from scquery.train import pretrain, train


@pytest.fixture(scope="module")
def fixed_genes(split, small_config):
    """Small options with the genes fixed, so that references of other cells keep the same genes."""
    return {**small_config, "genes": list(split[0].var_names), "epochs": 3, "pretrain_epochs": 1}


def with_missing_labels(reference, every=3):
    """A copy in which every `every`-th cell has no label (NaN, or an empty string for some)."""
    reference = reference.copy()
    labels = reference.obs["bulk_labels"].astype(object)
    rows = np.arange(reference.n_obs)
    labels[rows % every == 0] = np.nan
    labels[rows % (2 * every) == 0] = ""
    reference.obs["bulk_labels"] = labels
    return reference, rows % every != 0


def test_unlabelled_reference_cells_pretrain_but_are_not_classified_nor_without_propagation_points(
    split, fixed_genes
):
    partly, labelled = with_missing_labels(split[0])
    only_labelled = split[0][labelled].copy()
    options = {**fixed_genes, "propagate": False}  # propagated labels: tests/test_propagate.py
    mixed = train(partly, label_key="bulk_labels", config=options, seed=0)
    alone = train(only_labelled, label_key="bulk_labels", config=options, seed=0)
    assert list(mixed.reference.obs_names) == list(alone.reference.obs_names)
    assert set(mixed.reference.obs_names) <= set(only_labelled.obs_names)
    assert mixed.classes == alone.classes
    assert mixed.history["cells"] == {
        "labelled": alone.reference.n_obs,
        "propagated": 0,
        "reference": split[0].n_obs,
    }
    assert [stage["cells"] for stage in mixed.history["pretrain"]] == [split[0].n_obs] * 2
    # The unlabelled cells change the pretrained encoder ...
    assert not np.allclose(mixed.model.get_weights()[0], alone.model.get_weights()[0])
    # ... but not the classifier's training: without pretraining both models are the same.
    no_pretraining = {**options, "pretrain": False}
    a = train(partly, label_key="bulk_labels", config=no_pretraining, seed=0)
    b = train(only_labelled, label_key="bulk_labels", config=no_pretraining, seed=0)
    for x, y in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_unlabeled_data_are_aligned_to_the_reference_genes(split, fixed_genes):
    reference, query = split
    other = query[:, np.random.default_rng(0).permutation(query.n_vars)].copy()
    other.var_names = [name.lower() for name in other.var_names]  # matched case-insensitively
    extra = other[:, :5].copy()
    extra.var_names = [f"NOT_A_GENE_{i}" for i in range(5)]
    other = ad.concat([other, extra], axis=1)
    other.uns["scquery"] = {"source": "other.h5ad"}
    aligned = pretrain(reference, config=fixed_genes, unlabeled=other, seed=0)
    direct = pretrain(reference, config=fixed_genes, unlabeled=[query], seed=0)
    alone = pretrain(reference, config=fixed_genes, seed=0)
    assert aligned.genes == direct.genes == list(reference.var_names)
    assert aligned.history[0]["cells"] == reference.n_obs + query.n_obs
    for (k1, b1), (k2, b2) in zip(aligned.weights, direct.weights, strict=True):
        np.testing.assert_allclose(k1, k2, atol=1e-6)
        np.testing.assert_allclose(b1, b2, atol=1e-6)
    assert not np.allclose(aligned.weights[0][0], alone.weights[0][0])
    with pytest.raises(ScqueryError, match="pretrain is false"):
        train(reference, label_key="bulk_labels", config={**fixed_genes, "pretrain": False}, unlabeled=query)


def test_cli_unlabeled_files_with_other_genes(split, tmp_path, small_config):
    reference, query = split
    reference.write_h5ad(tmp_path / "reference.h5ad")
    keep = np.random.default_rng(1).permutation(query.n_vars)[: int(0.9 * query.n_vars)]
    query[:, keep].copy().write_h5ad(tmp_path / "more.h5ad")
    config = tmp_path / "train.yaml"
    config.write_text("min_genes: 0\nhidden_sizes: [32, 8]\npretrain_epochs: 1\nepochs: 2\n")
    out = tmp_path / "model"
    argv = ["train", str(tmp_path / "reference.h5ad"), "--unlabeled", str(tmp_path / "more.h5ad")]
    argv += ["--label-key", "bulk_labels", "--out", str(out), "--config", str(config), "--quiet"]
    assert main(argv) == 0
    bundle = load_bundle(out)
    assert bundle.history["pretrain"][0]["cells"] == reference.n_obs + query.n_obs
    assert bundle.reference.n_obs == reference.n_obs
    assert bundle.genes == list(reference.var_names)


def test_a_reference_without_any_label_is_a_clear_error(split, tmp_path, capsys, small_config):
    unlabelled = split[0].copy()
    unlabelled.obs["bulk_labels"] = pd.Series([np.nan] * unlabelled.n_obs, dtype=object).to_numpy()
    with pytest.raises(ScqueryError, match="labels none of its 490 cells"):
        train(unlabelled, label_key="bulk_labels", config=small_config)
    unlabelled.obs["bulk_labels"] = ""
    unlabelled.write_h5ad(tmp_path / "unlabelled.h5ad")
    argv = ["train", str(tmp_path / "unlabelled.h5ad"), "--label-key", "bulk_labels"]
    assert main([*argv, "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "labels none of its 490 cells" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "model").exists()
