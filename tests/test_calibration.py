"""The calibrated Unknown decision: fitted on the reference when a model is trained, saved and read back
with the bundle, the default for a bundle saved without one."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scquery.bundle import load_bundle
from scquery.calibration import DEFAULT, MARKER_FEATURES, Calibration, fit_calibration, study_level
from scquery.query import query
from scquery.selftest import shifted


def test_the_calibration_is_fitted_at_training_and_saved_with_the_bundle(bundle, split, tmp_path):
    calibration = Calibration.from_dict(bundle.calibration)
    assert calibration is not None and "default" not in calibration.fitted
    assert calibration.fitted["held_out"] and calibration.fitted["auroc"] > 0.5
    # keeping more of its type's genes makes a group less likely new
    assert all(c < 0 for c in calibration.coefficients[:3])
    bundle.save(tmp_path / "model")
    loaded = load_bundle(tmp_path / "model")
    assert loaded.calibration == bundle.calibration
    assert Calibration.from_dict(loaded.calibration) == calibration
    first, second = split[1][:300].copy(), split[1][:300].copy()
    query(first, bundle, matches=False)
    query(second, loaded, matches=False)
    np.testing.assert_array_equal(first.obs["scquery_unknown_score"], second.obs["scquery_unknown_score"])


def test_a_bundle_without_a_calibration_uses_the_default_with_a_warning(bundle, split):
    older = dataclasses.replace(bundle, calibration=None)
    older.index = bundle.index
    adata = split[1][:200].copy()
    with pytest.warns(UserWarning, match="no calibration"):
        query(adata, older, matches=False)
    features = adata.obs[[f"scquery_{name}" for name in MARKER_FEATURES]].set_axis(MARKER_FEATURES, axis=1)
    np.testing.assert_allclose(adata.obs["scquery_unknown_score"], DEFAULT.probability(features), rtol=1e-5)
    # a calibration of another version, or a damaged one, is not read
    saved = DEFAULT.to_dict()
    assert Calibration.from_dict({**saved, "version": 0}) is None
    assert Calibration.from_dict({k: v for k, v in saved.items() if k != "intercept"}) is None
    assert Calibration.from_dict({**saved, "coefficients": [1.0, "x", None]}) is None
    assert Calibration.from_dict({**saved, "coefficients": [1.0]}) is None


def test_the_fit_weighs_new_and_known_cells_alike():
    """Groups that keep their type's genes are known, groups that lose them hold the held-out type:
    the fitted probability orders them, whatever the number of groups of each kind."""
    rng = np.random.default_rng(0)
    kept = rng.uniform(0.7, 1.0, (40, len(MARKER_FEATURES)))
    lost = rng.uniform(0.0, 0.4, (5, len(MARKER_FEATURES)))
    table = pd.DataFrame(np.vstack([kept, lost]), columns=list(MARKER_FEATURES))
    table["cells"] = 100
    table["held"] = np.r_[np.zeros(40), np.ones(5)]
    calibration = fit_calibration(table, fitted={"test": True})
    scores = calibration.probability(table)
    assert scores[:40].max() < 0.5 < scores[40:].min()
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    # no group of a held-out type: nothing to fit
    assert fit_calibration(table.assign(held=0.0)) is None


def test_the_simulated_study_shift_keeps_the_input_and_its_sparsity():
    X = sp.random(50, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data = np.log1p(X.data * 10)
    before = X.copy()
    moved = shifted(X, np.random.default_rng(0))
    assert sp.issparse(moved) and moved.dtype == np.float32 and moved.nnz < X.nnz
    assert (X != before).nnz == 0
    assert set(zip(*moved.nonzero(), strict=True)) <= set(zip(*X.nonzero(), strict=True))


def test_a_query_whose_best_type_keeps_less_is_judged_against_its_own_level():
    """Another study shows every type's genes less sharply: the best-kept type of the query (of 5 % of
    its cells or more) stands for a known type there, and the groups are raised to the self-test's level."""
    table = pd.DataFrame(
        {
            "own_markers": [0.4, 0.3, 0.95, np.nan],
            "lineage_markers": [0.4, 0.3, 0.95, np.nan],
            "query_markers": [0.4, 0.3, 0.95, np.nan],
            "type": ["A", "B", "C", "D"],
            "cells": [100, 50, 2, 30],  # C: under 5 % of the cells; D: not measured
        }
    )
    assert study_level(table) == pytest.approx(0.4)
    calibration = dataclasses.replace(DEFAULT, level=0.8)
    plain, rescaled = calibration.probability(table), calibration.probability(table, rescale=True)
    assert plain[0] > 0.5 > rescaled[0]  # A, kept 0.4 of its genes where the query's best keeps 0.4
    assert rescaled[1] > rescaled[0]
    assert rescaled[2] == pytest.approx(1 / (1 + np.exp(7.0 - 3.5)))  # C: 0.95 raised, capped at 1
    # a query at the self-test's level or above, or a calibration without a level: features unchanged
    sharp = table.copy()
    sharp.loc[0, list(MARKER_FEATURES)] = 0.9
    np.testing.assert_allclose(calibration.probability(sharp, rescale=True), calibration.probability(sharp))
    np.testing.assert_allclose(DEFAULT.probability(table, rescale=True), DEFAULT.probability(table))
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert Calibration.from_dict({**calibration.to_dict(), "level": "x"}) is None
