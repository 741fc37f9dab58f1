"""The reference queried against itself: the self-test that fits each reference's Unknown decision.

`calibrate` splits the reference's cells in two halves, type by type (`CELLS_PER_TYPE` at most per
half): one half is a pseudo-query, the other its reference. The pseudo-query is first changed as
another study might measure it (`shifted`: each gene scaled by its own factor, part of the detected
values lost), then embedded by the trained model and clustered like any query. Then, for no type and
for each type with `MIN_HELD_OUT_CELLS` pseudo-query cells in turn, that type is held out: its cells
leave the pseudo-reference (the vote and the type profiles are taken without them) and the
classifier's output for it is dropped (the others' probabilities renormalized), so its pseudo-query
cells are mapped onto their nearest known types, as a type the reference lacks would be. Each
pseudo-query group (`scquery.profiles.judged_groups`) is measured as a query's are
(`scquery.profiles.group_features`), with the share of its cells of the held-out type, and
`scquery.calibration.fit_calibration` fits the decision on them.
"""

import keras
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from .calibration import MARKER_FEATURES, fit_calibration, study_level
from .classifier import embedding_model, predict_in_chunks
from .logs import logger
from .neighbors import NeighborIndex
from .profiles import group_features, group_means, judged_groups, type_profiles
from .query import cluster_query, combine_evidence, vote

#: The simulated change of study: each gene's values scaled by a log-normal factor of this spread,
#: and each detected value kept with this probability (the kept ones scaled up to make up for it).
SHIFT_SIGMA, SHIFT_KEEP = 0.5, 0.5
#: Cells of each type taken for each half (a sample of larger types).
CELLS_PER_TYPE = 300
#: The fewest pseudo-query cells of a type for it to be held out.
MIN_HELD_OUT_CELLS = 20
#: The pseudo-query's neighbours and clustering, as a query's at its defaults.
K, RESOLUTION = 15, 1.0


def calibrate(X, rows, labels, model, *, classes, seed=0, batch_size=8192):
    """The `scquery.calibration.Calibration` of a reference (module docstring), or None where no type
    can be held out (fewer than three types, or none with enough cells).

    `X` holds the processed reference (CSR, or rows made on demand), `rows` the reference points' rows
    in it and `labels` their types; `model` is the trained classifier, `classes` its types in order.
    """
    table = self_test(X, rows, labels, model, classes=classes, seed=seed, batch_size=batch_size)
    held = sorted(set(table["held_out"]) - {""})
    if not held:
        return None
    new = table["held"].to_numpy() * table["cells"].to_numpy()
    calibration = fit_calibration(
        table,
        fitted={
            "cells": int(table.loc[table["held_out"] == "", "cells"].sum()),
            "held_out": held,
            "groups": len(table),
            "shift": {"sigma": SHIFT_SIGMA, "keep": SHIFT_KEEP},
        },
        level=study_level(table[table["held_out"] == ""]),
    )
    if calibration is None:
        return None
    scores = calibration.probability(table)
    cells = table["cells"].to_numpy()
    auroc = roc_auc_score(
        np.r_[np.ones(len(table)), np.zeros(len(table))],
        np.r_[scores, scores],
        sample_weight=np.r_[new, cells - new],
    )
    calibration.fitted["auroc"] = round(float(auroc), 4)
    logger.info(
        "calibrating the Unknown calls: %s types held out in turn on %s of the reference's cells "
        "(self-test AUROC %.3f)",
        len(held),
        f"{calibration.fitted['cells']:,}",
        auroc,
    )
    return calibration


def self_test(X, rows, labels, model, *, classes, seed=0, batch_size=8192):
    """The pseudo-query's groups in every scenario (module docstring): a DataFrame with the
    `MARKER_FEATURES`, `type`, `cells`, `held` (the share of the group's cells of the type held out)
    and `held_out` (that type; '' for none)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=object)
    query_rows, reference_rows = _halves(labels, rng)
    if query_rows.size < 2 or len(classes) < 3:
        return pd.DataFrame(columns=[*MARKER_FEATURES, "type", "cells", "held", "held_out"])
    query_values = shifted(_rows(X, np.asarray(rows)[query_rows]), rng)
    reference_values = _rows(X, np.asarray(rows)[reference_rows])
    encoder = embedding_model(model)
    network = keras.Model(encoder.input, [encoder.output, model.output])
    query_embedding, query_probabilities = predict_in_chunks(network, query_values, chunk_size=batch_size)
    reference_embedding = predict_in_chunks(encoder, reference_values, chunk_size=batch_size)
    clusters = cluster_query(query_values, resolution=RESOLUTION, seed=seed)
    clusters = np.unique(clusters, return_inverse=True)[1]
    query_labels, reference_labels = labels[query_rows], labels[reference_rows]
    counts = pd.Series(query_labels).value_counts()
    held_out = [label for label in classes if counts.get(label, 0) >= MIN_HELD_OUT_CELLS]
    tables = []
    for held in [None, *held_out]:
        kept = np.flatnonzero(reference_labels != held)
        columns = [i for i, label in enumerate(classes) if label != held]
        names = np.asarray(classes, dtype=object)[columns]
        codes = pd.Index(names).get_indexer(reference_labels[kept])
        index = NeighborIndex(reference_embedding[kept], seed=seed)
        distances, neighbours = index.kneighbors(query_embedding, K)
        shares = vote(distances, codes[neighbours], len(names))
        probabilities = query_probabilities[:, columns]
        probabilities = probabilities / np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
        evidence = combine_evidence(shares, probabilities, np.arange(len(names)))
        cluster_types = names[group_means(evidence, clusters)[1].argmax(axis=1)]
        groups, types = judged_groups(clusters, names[evidence.argmax(axis=1)], cluster_types)
        profiles = type_profiles(reference_values, reference_labels[kept], rows=kept)
        table = group_features(query_values, groups, types, profiles)
        table["type"] = types
        table["cells"] = np.bincount(groups)
        table["held"] = np.bincount(groups, weights=query_labels == held) / table["cells"]
        table["held_out"] = "" if held is None else held
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def shifted(X, rng):
    """The log-normalized rows of CSR `X` as another study might measure them (`SHIFT_SIGMA`,
    `SHIFT_KEEP`), as CSR float32 (`X` unchanged)."""
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    linear = np.expm1(X.data) * np.exp(rng.normal(0, SHIFT_SIGMA, X.shape[1]))[X.indices]
    kept = rng.random(linear.size) < SHIFT_KEEP
    X.data = np.log1p(np.where(kept, linear / SHIFT_KEEP, 0.0))
    X.eliminate_zeros()
    return X.astype(np.float32)


def _halves(labels, rng):
    """The pseudo-query's and the pseudo-reference's positions in `labels`: each type's cells
    shuffled, up to `CELLS_PER_TYPE` to each half (the pseudo-query gets the smaller half)."""
    query, reference = [], []
    for label in pd.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))[: 2 * CELLS_PER_TYPE]
        query.append(cells[: cells.size // 2])
        reference.append(cells[cells.size // 2 :])
    return np.sort(np.concatenate(query)), np.sort(np.concatenate(reference))


def _rows(X, rows):
    """The rows `rows` of the processed reference as CSR float32 (read on demand where `X` is)."""
    order = np.argsort(rows)
    block = X[rows[order]]
    block = sp.csr_matrix(block, dtype=np.float32)
    return block[np.argsort(order)]
