"""A reference with few labels: its unlabelled cells, labelled by the model, become reference points
marked 'propagated' (scquery.propagate), so that the prediction holds with 5 labelled cells a type."""

import sys
from pathlib import Path

import numpy as np
import pytest

from scquery.bundle import load_bundle, save_bundle
from scquery.propagate import LABEL_SOURCE, PROPAGATED, USER, confident_labels
from scquery.query import UNKNOWN, query
from scquery.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.synthetic import synthetic_counts  # noqa: E402

#: Small options; a narrower encoder ([64, 16]), once pretrained, is not fine-tuned at all on 50 cells.
CONFIG = {"min_genes": 0, "hidden_sizes": [128, 32], "pretrain_epochs": 4, "epochs": 30, "batch_size": 64}
PER_TYPE = 5


@pytest.fixture(scope="module")
def thin():
    """A reference of 10 types × 5 labelled cells and 1,000 unlabelled cells, a query of the same
    study, and the bundle trained on the reference."""
    reference = synthetic_counts(1050, n_genes=2000, seed=0)
    query_data = synthetic_counts(500, n_genes=2000, seed=1)
    types = reference.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    keep = np.zeros(types.size, dtype=bool)
    for name in np.unique(types):
        keep[rng.choice(np.flatnonzero(types == name), size=PER_TYPE, replace=False)] = True
    labels = reference.obs["cell_type"].astype(object)
    labels[~keep] = np.nan
    reference.obs["cell_type"] = labels
    return reference, query_data, keep, train(reference, label_key="cell_type", config=CONFIG, seed=0)


def test_five_labels_a_type_give_a_prediction_with_few_unknowns(thin):
    reference, query_data, _, bundle = thin
    assert bundle.history["cells"]["propagated"] >= 500
    annotated = query_data.copy()
    query(annotated, bundle)
    prediction = annotated.obs["scquery_prediction"].astype(str).to_numpy()
    truth = annotated.obs["cell_type"].astype(str).to_numpy()
    assert (prediction == UNKNOWN).mean() <= 0.05
    assert (prediction == truth).mean() >= 0.9


def test_propagated_labels_are_marked_and_the_users_are_kept(thin, tmp_path):
    reference, _, keep, bundle = thin
    source = bundle.reference.obs[LABEL_SOURCE].astype(str)
    user = bundle.reference.obs_names[source == USER]
    assert sorted(user) == sorted(reference.obs_names[keep])
    assert (source == PROPAGATED).sum() == bundle.history["cells"]["propagated"]
    assert set(bundle.reference.obs_names[source == PROPAGATED]).isdisjoint(reference.obs_names[keep])
    given = reference.obs["cell_type"].loc[user].astype(str)
    np.testing.assert_array_equal(bundle.reference.obs["label"].loc[user].astype(str), given)
    save_bundle(bundle, tmp_path / "model")
    loaded = load_bundle(tmp_path / "model")
    assert list(loaded.reference.obs[LABEL_SOURCE].astype(str)) == list(source)


def test_propagation_is_an_option_and_takes_confident_cells_only(thin):
    reference, _, keep, _ = thin
    off = train(reference, label_key="cell_type", config={**CONFIG, "propagate": False}, seed=0)
    assert off.reference.n_obs == keep.sum() and off.history["cells"]["propagated"] == 0
    rows, codes = confident_labels(np.array([[0.95, 0.05], [0.6, 0.4], [0.0, 1.0]]), min_probability=0.9)
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(codes, [0, 1])


def test_a_fully_labelled_reference_takes_the_path_it_took_without_propagation(bundle, split, small_config):
    assert set(bundle.reference.obs[LABEL_SOURCE].astype(str)) == {USER}
    assert bundle.history["cells"]["propagated"] == 0
    off = train(split[0], label_key="bulk_labels", config={**small_config, "propagate": False}, seed=0)
    assert off.model_id == bundle.model_id
    assert list(off.reference.obs_names) == list(bundle.reference.obs_names)
    np.testing.assert_array_equal(off.reference.obsm["X_scquery"], bundle.reference.obsm["X_scquery"])
