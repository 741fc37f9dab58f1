"""Expression profiles of the reference's cell types, and whether a query cluster shows its type's markers.

A type's profile is the mean of its reference cells' processed values (log-normalized, on the model's
genes), saved in the bundle's reference (`uns['profiles']`). A query cluster's markers are its mean
minus the query's average type (each type the query's clusters are mapped to counts once, as
the mean of its clusters, so that a type spanning many clusters is not the baseline it is judged
against): measured within the query's own study, so what two studies
differ in everywhere (depth, chemistry, batch) cancels. A cluster mapped to type T is checked on the
genes that define T in the reference, and only on those, in two ways:

- `marker_agreement`: T's lineage genes, the `DEFINING_GENES` genes T raises most against the mix of
  types the query's clusters are mapped to (its profile minus the mean of those types' profiles, so a
  query of only T cells is judged on what tells T-cell types apart);
- `unique_markers`: T's own genes, those T raises above every other reference type.

Each is the share of those genes the cluster expresses above the query's average type. A cell type
the reference lacks, mapped onto its nearest known type, lacks many of them (NK cells read as CD8 T
lack CD3 and CD8; acinar cells read as ductal lack KRT19 and CFTR), while a known type under a
treatment, stress or the cell cycle keeps them: whatever else the condition raises does not define the
type and is not counted.
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Key of the profiles in the reference's `uns`.
PROFILES_KEY = "profiles"
#: How many of the genes a type raises most (against the query's mix of types, or above every other
#: type) define it.
DEFINING_GENES = 50
#: The fewest such genes (raised by a quarter or more) a type needs to be judged on them.
MIN_DEFINING_GENES = 5


#: Rows read at a time from data made on demand (`scquery.batches.RowSource`, e.g. from disk).
CHUNK_ROWS = 8192


def group_means(X, groups, *, rows=None):
    """`(names, means, counts)`: the sorted distinct `groups` of the rows `rows` of `X` (default: all),
    the mean row per group (a dense groups × genes float32 array; `X`, CSR or dense, is never densified
    or copied; rows made on demand are read `CHUNK_ROWS` at a time) and the rows per group."""
    rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
    codes, names = pd.factorize(pd.Series(np.asarray(groups)), sort=True)
    n_groups = len(names)
    counts = np.bincount(codes, minlength=n_groups)
    if sp.issparse(X) or isinstance(X, np.ndarray):
        parts = [(rows, codes, X)]
    else:
        parts = (
            (np.arange(len(chunk)), codes[start : start + CHUNK_ROWS], X[chunk])
            for start in range(0, len(rows), CHUNK_ROWS)
            for chunk in [rows[start : start + CHUNK_ROWS]]
        )
    means = np.zeros((n_groups, X.shape[1]))
    for positions, part, values in parts:
        indicator = sp.csr_matrix((1.0 / counts[part], (part, positions)), shape=(n_groups, values.shape[0]))
        product = indicator @ values
        means += product.toarray() if sp.issparse(product) else np.asarray(product)
    return names.to_numpy(), means.astype(np.float32), counts


def type_profiles(X, labels, *, rows=None):
    """The profiles of the cells `rows` of `X` (default: all), labelled `labels`:
    `{'labels', 'means' (types × genes), 'cells' (per type)}`."""
    names, means, counts = group_means(X, labels, rows=rows)
    return {"labels": names.astype(str), "means": means, "cells": counts.astype(np.int64)}


def merge_profiles(first, second):
    """The profiles of two sets of cells on the same genes taken together (weighted by their cells)."""
    labels = sorted(set(first["labels"]) | set(second["labels"]))
    means = np.zeros((len(labels), first["means"].shape[1]))
    cells = np.zeros(len(labels), dtype=np.int64)
    for part in (first, second):
        rows = pd.Index(labels).get_indexer(part["labels"])
        means[rows] += part["means"] * np.asarray(part["cells"])[:, None]
        cells[rows] += part["cells"]
    return {
        "labels": np.asarray(labels, dtype=str),
        "means": (means / cells[:, None]).astype(np.float32),
        "cells": cells,
    }


def marker_agreement(X, clusters, types, profiles, *, measured=None):
    """Per query cluster: the share of its type's lineage genes it expresses (module docstring).

    `X` holds the query's processed values (cells × the model's genes), `clusters` each cell's cluster,
    `types` each cluster's predicted type (a mapping from cluster to label). A type's lineage genes are
    the `DEFINING_GENES` that its profile raises most, by a quarter or more, against the mean of the
    profiles of the clusters' types; a cluster is judged on them when there are `MIN_DEFINING_GENES`.
    `measured` (a boolean per gene; default: all) marks the genes the query holds: a gene it lacks
    (zero-filled, e.g. without an orthologue) says nothing about its cells and is never counted.

    Returns:
        A `pandas.Series` indexed by cluster, in [0, 1]; NaN where a cluster's type has no profile or
        too few such genes, and for every cluster when they all share one type (nothing tells them
        apart in the reference).
    """
    return _shares(X, clusters, types, profiles, measured, lambda profile, mix, _: profile - mix.mean(axis=0))


def unique_markers(X, clusters, types, profiles, *, measured=None):
    """Per query cluster: the share of its type's own genes it expresses (module docstring).

    As `marker_agreement`, but a type's genes are those it raises above every other reference type
    (the `DEFINING_GENES` with the largest margin over the highest other profile, by a quarter or
    more).
    """
    return _shares(
        X, clusters, types, profiles, measured, lambda profile, _, others: profile - others.max(axis=0)
    )


def _shares(X, clusters, types, profiles, measured, contrast):
    """The share of each cluster's type's genes (the highest of `contrast(profile, mix, others)`, by a
    quarter or more) that the cluster expresses above the query's average type (the mean over the
    clusters' types of each type's mean cluster), against the mix of those types, each once."""
    names, means, _ = group_means(X, clusters)
    result = pd.Series(np.nan, index=names)
    labels = list(profiles["labels"])
    reference = np.asarray(profiles["means"], dtype=np.float64)
    known = np.array([types[name] in labels for name in names], dtype=bool)
    if len({types[name] for name in names[known]}) < 2:
        return result
    mapped = np.array([types[name] for name in names[known]])
    # Each type counts once, however many clusters it spans: the mean of its clusters' means.
    kinds, per_kind = np.unique(mapped, return_inverse=True)
    baseline = group_means(means[known], per_kind)[1].mean(axis=0)
    query_markers = means[known] - baseline
    mix = reference[[labels.index(kind) for kind in kinds]]
    for name, cluster in zip(names[known], query_markers, strict=True):
        row = labels.index(types[name])
        genes = _raised(contrast(reference[row], mix, np.delete(reference, row, axis=0)), measured)
        if genes.size >= MIN_DEFINING_GENES:
            result[name] = float((cluster[genes] > 0).mean())
    return result


def own_genes(profiles, label, *, measured=None):
    """The columns of `label`'s own genes (those it raises above every other type's profile, as in
    `unique_markers`), among the `measured` ones; empty for a label without a profile."""
    labels = list(profiles["labels"])
    if label not in labels or len(labels) < 2:
        return np.array([], dtype=np.int64)
    reference = np.asarray(profiles["means"], dtype=np.float64)
    row = labels.index(label)
    return _raised(reference[row] - np.delete(reference, row, axis=0).max(axis=0), measured)


def _raised(raised, measured):
    """The `DEFINING_GENES` columns of highest `raised` (by a quarter or more), among the `measured`."""
    if measured is not None:
        raised = np.where(measured, raised, -np.inf)
    genes = np.argsort(-raised, kind="stable")[:DEFINING_GENES]
    return genes[raised[genes] > np.log(1.25)]
