"""The query's promises, pinned: the vote and the confidence formula with exact values, each Unknown
rule driven over and under its threshold, and the order of the reasons (the first that holds)."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from scquery.query import UNKNOWN, cluster_query, combine_evidence, search, transfer, vote
from scquery.rules import REASONS, SIGNALS, QueryOptions, unknown_reasons, unknown_score

NONE, NO_GENES, LOW, NEW, MARKERS = range(5)
PERMISSIVE = {
    "min_confidence": 0.0,
    "novelty_threshold": 1e9,
    "min_marker_agreement": 0.0,
    "min_unique_markers": 0.0,
}


def test_reasons_are_named_in_their_order():
    assert REASONS == ["", "no reference genes", "low confidence", "new cluster", "markers differ"]


# The vote and the confidence formula, by hand.


def test_vote_with_equal_distances_counts_the_neighbours():
    shares = vote(np.full((1, 4), 2.0), np.array([[0, 0, 0, 1]]), 3)
    np.testing.assert_array_equal(shares, [[0.75, 0.25, 0.0]])


def test_vote_scales_each_cell_by_its_own_mean_distance():
    # three cells, two neighbours each: the shares depend on the ratio of the distances only
    distances = np.array([[1.0, 3.0], [10.0, 30.0], [0.0, 0.0]])
    shares = vote(distances, np.array([[1, 0], [1, 0], [0, 1]]), 3)
    first = 1 / (1 + np.exp(-1))
    np.testing.assert_allclose(
        shares, [[1 - first, first, 0], [1 - first, first, 0], [0.5, 0.5, 0]], rtol=1e-6
    )
    assert shares.dtype == np.float32


def test_vote_weighs_each_neighbour_by_exp_of_minus_distance_over_the_mean():
    # distances 1 and 3, mean 2: weights e^-0.5 and e^-1.5, so the first label's share is 1 / (1 + e^-1)
    shares = vote(np.array([[1.0, 3.0]]), np.array([[1, 0]]), 2)
    np.testing.assert_allclose(shares, [[1 - 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-1))]], rtol=1e-6)


def test_evidence_is_the_mean_of_vote_share_and_classifier_probability():
    shares = np.array([[0.75, 0.25, 0.0], [0.0, 0.25, 0.75], [0.5, 0.5, 0.0]], dtype=np.float32)
    probabilities = np.array([[0.5, 0.5], [0.875, 0.125], [0.0, 1.0]], dtype=np.float32)
    # labels A, B, C; the classifier knows A and B, C came with `extend`
    evidence = combine_evidence(shares, probabilities, np.array([0, 1]))
    np.testing.assert_array_equal(
        evidence,
        [
            [0.625, 0.375, 0.0],  # (0.75 + 0.5) / 2, (0.25 + 0.5) / 2
            [0.0, 0.25, 0.75],  # the vote favours C, which the classifier never saw: the vote alone
            [0.25, 0.75, 0.0],  # the classifier can outweigh the vote
        ],
    )


def test_evidence_places_the_classes_at_their_labels():
    shares = np.array([[0.5, 0.25, 0.25]], dtype=np.float32)
    probabilities = np.array([[0.5, 0.25, 0.25]], dtype=np.float32)  # classes C, A, B
    evidence = combine_evidence(shares, probabilities, np.array([2, 0, 1]))
    np.testing.assert_array_equal(evidence, [[0.375, 0.25, 0.375]])


# The rules and their order, on arrays.


def test_each_rule_at_its_threshold_and_the_first_reason_wins():
    expressed = np.array([False, True, True, True, True, True, True])
    confidence = np.array([0.1, 0.1, 0.9, 0.9, 0.9, 0.5, 0.49])
    cluster_novelty = np.array([5.0, 5.0, 5.0, 0.2, 0.2, 1.0, 0.0])
    agreement = np.array([0.0, 0.0, 0.0, 0.0, 0.9, 0.5, 0.9, 0.9])
    unique = np.array([0.0, 0.0, 0.0, 0.9, 0.9, 0.7, 0.9, 0.69])
    expressed = np.append(expressed, True)
    confidence, cluster_novelty = np.append(confidence, 0.9), np.append(cluster_novelty, 0.0)
    reasons = unknown_reasons(
        expressed,
        confidence,
        cluster_novelty,
        agreement,
        unique,
        min_confidence=0.5,
        novelty_threshold=1.0,
        min_marker_agreement=0.5,
        min_unique_markers=0.7,
    )
    # cell 0 meets every rule, cell 1 all but the genes, cell 2 the last two, cell 3 the last one;
    # cell 5 sits exactly at every threshold (kept), cell 6 just under the confidence, cell 7 lacks
    # its type's own genes only
    np.testing.assert_array_equal(reasons, [NO_GENES, LOW, NEW, MARKERS, NONE, NONE, LOW, MARKERS])
    assert reasons.dtype == np.int64  # codes into REASONS
    as_numbers = unknown_reasons(
        expressed.astype(int),
        confidence,
        cluster_novelty,
        agreement,
        unique,
        **{**PERMISSIVE, "min_confidence": 0.5},
    )
    np.testing.assert_array_equal(as_numbers, [NO_GENES, LOW, NONE, NONE, NONE, NONE, LOW, NONE])


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("min_confidence", 0.91, [LOW, NONE]),
        ("min_confidence", 0.89, [NONE, NONE]),
        ("novelty_threshold", 0.29, [NEW, NONE]),
        ("novelty_threshold", 0.31, [NONE, NONE]),
        ("min_marker_agreement", 0.41, [MARKERS, NONE]),
        ("min_marker_agreement", 0.39, [NONE, NONE]),
        ("min_unique_markers", 0.61, [MARKERS, NONE]),
        ("min_unique_markers", 0.59, [NONE, NONE]),
    ],
)
def test_each_rule_over_and_under_its_threshold(rule, value, expected):
    # cell 0: confidence 0.9, novelty 0.3, agreement 0.4, own genes 0.6; cell 1 far from every threshold
    options = {**PERMISSIVE, rule: value}
    reasons = unknown_reasons(
        [True, True],
        np.array([0.9, 1.0]),
        np.array([0.3, -1.0]),
        np.array([0.4, 1.0]),
        np.array([0.6, 1.0]),
        **options,
    )
    np.testing.assert_array_equal(reasons, expected)


def test_the_unknown_score_is_one_half_at_each_threshold_and_the_largest_part_past_them():
    thresholds = {
        "min_confidence": 0.5,
        "novelty_threshold": 1.0,
        "min_marker_agreement": 0.6,
        "min_unique_markers": 0.7,
    }
    cells = [
        ([1, 0.5, 1.0, 0.6, 0.7], 0.5),  # every score at its threshold
        ([1, 0.9, -1.0, 1.0, 1.0], None),  # clear of every threshold
        ([1, 0.9, -1.0, 0.3, 1.0], None),  # past one threshold only
        ([0, 0.9, -1.0, 1.0, 1.0], 1.0),  # no reference genes
    ]
    score = unknown_score(*np.array([cell for cell, _ in cells], dtype=np.float64).T, **thresholds)
    assert score[0] == 0.5 and score[3] == 1.0
    assert score[1] < 0.5 < score[2] < 1.0
    # a share's part: the threshold's odds against the score's (0.6 / 0.4 against 0.3 / 0.7)
    assert score[2] == pytest.approx(1.5 / (1.5 + 3 / 7), rel=1e-6)
    assert score.dtype == np.float32
    # NaN (a cluster not judged) counts as no part; 0 turns a share's check off
    nan = [np.ones(2), np.full(2, 0.9), np.full(2, -1.0), np.array([np.nan, 0.0]), np.ones(2)]
    off = unknown_score(*nan, **{**thresholds, "min_marker_agreement": 0.0})
    assert off[0] == off[1] < 0.5


@pytest.mark.parametrize(("signal", "clear"), [(1, 0.55), (2, 0.85), (3, 0.65), (4, 0.75)])
def test_a_lower_cut_off_makes_every_rule_stricter_at_once(signal, clear):
    # one cell just clear of one threshold (the others far clear): kept at 0.5, Unknown for its reason at 0.4
    thresholds = {
        "min_confidence": 0.5,
        "novelty_threshold": 1.0,
        "min_marker_agreement": 0.6,
        "min_unique_markers": 0.7,
    }
    scores = [np.array([1.0]), np.array([1.0]), np.array([-5.0]), np.array([1.0]), np.array([1.0])]
    scores[signal] = np.array([clear])
    assert unknown_reasons(*scores, **thresholds)[0] == NONE
    assert unknown_reasons(*scores, max_unknown_score=0.4, **thresholds)[0] == REASONS.index(
        SIGNALS[signal].reason
    )
    assert 0.4 < unknown_score(*scores, **thresholds)[0] < 0.5


# The rules inside `transfer`, on a real query of the small model (`test_in_transfer_*`: these train it).


@pytest.fixture(scope="module")
def searched(bundle, split):
    """The search step of 150 query cells, and their clusters (as `transfer` finds them)."""
    neighbors = search(split[1][:150].copy(), bundle, QueryOptions(k=10))
    return neighbors, cluster_query(neighbors.processed, resolution=1.0, seed=0)


def hand_evidence(neighbors, bundle):
    """The evidence per cell and label as the module docstring defines it, computed here by hand."""
    labels = list(bundle.classes)  # no `extend`: the model's types are the reference's
    codes = np.array([labels.index(name) for name in bundle.reference.obs["label"].astype(str)])
    d = neighbors.distances.astype(np.float64)
    weights = np.exp(-d / d.mean(axis=1, keepdims=True))
    shares = np.zeros((d.shape[0], len(labels)))
    for column in range(d.shape[1]):
        np.add.at(shares, (np.arange(d.shape[0]), codes[neighbors.indices[:, column]]), weights[:, column])
    shares /= weights.sum(axis=1, keepdims=True)
    return labels, (shares + neighbors.probabilities) / 2


def test_in_transfer_confidence_is_the_mean_of_vote_share_and_probability(searched, bundle):
    neighbors, _ = searched
    result = transfer(neighbors, bundle, QueryOptions(**PERMISSIVE))
    labels, evidence = hand_evidence(neighbors, bundle)
    best = evidence.argmax(axis=1)
    np.testing.assert_allclose(result.scores["confidence"], evidence[np.arange(len(best)), best], rtol=1e-5)
    assert list(result.prediction) == [labels[i] for i in best]
    assert (result.reason == NONE).all()
    # the vote alone differs: the formula is not the vote share
    assert np.abs(result.scores["confidence"] - result.knn_share).max() > 0.05


def test_in_transfer_low_confidence_over_and_under_the_threshold(searched, bundle):
    neighbors, _ = searched
    confidence = transfer(neighbors, bundle, QueryOptions(**PERMISSIVE)).scores["confidence"]
    threshold = float(np.median(confidence))
    result = transfer(neighbors, bundle, QueryOptions(**{**PERMISSIVE, "min_confidence": threshold}))
    low = confidence < threshold
    assert 0 < low.sum() < len(low)
    np.testing.assert_array_equal(result.reason, np.where(low, LOW, NONE))
    assert (result.prediction[low] == UNKNOWN).all() and (result.prediction[~low] != UNKNOWN).all()


def test_in_transfer_a_far_cluster_is_a_new_cluster_at_the_default_threshold(searched, bundle):
    neighbors, clusters = searched
    assert (
        transfer(neighbors, bundle, QueryOptions(**{**PERMISSIVE, "novelty_threshold": 1.0}))
        .scores["cluster_novelty"]
        .max()
        < 1.0
    )
    # one cluster moved 20 times farther from the reference: log 20 = 3 over the rest of the query
    far = clusters == np.bincount(clusters).argmin()
    distances = np.where(far[:, None], neighbors.distances * 20, neighbors.distances)
    moved = dataclasses.replace(neighbors, distances=distances.astype(np.float32))
    result = transfer(moved, bundle, QueryOptions(**{**PERMISSIVE, "novelty_threshold": 1.0}))
    np.testing.assert_array_equal(result.reason, np.where(far, NEW, NONE))
    assert (result.prediction[far] == UNKNOWN).all()
    assert (result.prediction[~far] != UNKNOWN).all()
    # the same cluster kept under a threshold above its novelty
    kept = transfer(
        moved,
        bundle,
        QueryOptions(**{**PERMISSIVE, "novelty_threshold": result.scores["cluster_novelty"].max() + 0.01}),
    )
    assert (kept.reason == NONE).all()


DEFAULTS = {"min_marker_agreement": 0.6, "min_unique_markers": 0.7}


@pytest.fixture(scope="module")
def scrambled(searched, bundle):
    """The search step with the expression of one query cluster (the largest of those judged on both
    marker shares) replaced by that of cells of another type: its cells still form a cluster and keep
    their neighbours (so their type), but express another type's genes, not their own."""
    neighbors, clusters = searched
    found = transfer(neighbors, bundle, QueryOptions(**PERMISSIVE))
    judged = ~np.isnan(found.scores["marker_agreement"]) & ~np.isnan(found.scores["unique_markers"])
    cells = np.flatnonzero(clusters == np.bincount(clusters[judged]).argmax())
    others = np.flatnonzero(found.prediction != found.prediction[cells[0]])
    X = neighbors.processed.toarray()
    X[cells] = X[others[np.arange(cells.size) % others.size]]
    return dataclasses.replace(neighbors, processed=sp.csr_matrix(X))


@pytest.mark.parametrize(
    ("rule", "score"),
    [("min_marker_agreement", "marker_agreement"), ("min_unique_markers", "unique_markers")],
)
def test_in_transfer_markers_differ_over_and_under_the_threshold(scrambled, bundle, rule, score):
    shares = transfer(scrambled, bundle, QueryOptions(**PERMISSIVE)).scores[score]
    lowest = float(np.nanmin(shares))
    assert lowest < DEFAULTS[rule]  # the scrambled cluster lacks its type's genes: caught at the default
    under = transfer(scrambled, bundle, QueryOptions(**{**PERMISSIVE, rule: lowest + 1e-4}))
    worst = shares < lowest + 1e-4
    assert 0 < worst.sum() < len(worst)
    np.testing.assert_array_equal(under.reason, np.where(worst, MARKERS, NONE))
    over = transfer(scrambled, bundle, QueryOptions(**{**PERMISSIVE, rule: lowest - 1e-4}))
    assert (over.reason == NONE).all()


def test_in_transfer_the_reasons_follow_their_order(searched, bundle):
    neighbors, _ = searched
    expressed = np.ones(len(neighbors.expressed), dtype=bool)
    expressed[:3] = False
    blank = dataclasses.replace(neighbors, expressed=expressed)
    # every rule at its strictest: markers above 1 flag every cluster that is judged (shares are <= 1)
    everything = {
        **PERMISSIVE,
        "min_confidence": 1.0,
        "novelty_threshold": 1e-6,
        "min_marker_agreement": 1.01,
    }
    result = transfer(blank, bundle, QueryOptions(**everything))
    np.testing.assert_array_equal(result.reason, np.where(expressed, LOW, NO_GENES))
    # without the confidence rule: the far clusters are new, the others' markers differ
    result = transfer(blank, bundle, QueryOptions(**{**everything, "min_confidence": 0.0}))
    far = result.scores["cluster_novelty"] > 1e-6
    assert 0 < far[3:].sum() < len(far) - 3
    np.testing.assert_array_equal(result.reason, np.where(~expressed, NO_GENES, np.where(far, NEW, MARKERS)))
