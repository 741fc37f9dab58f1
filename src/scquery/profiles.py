"""Expression profiles of the reference's cell types, and whether a query cluster shows its type's markers.

A type's profile is the mean of its reference cells' processed values (log-normalized, on the model's
genes), saved in the bundle's reference (`uns['profiles']`). A query cluster's markers are its mean
minus the mean of the query's clusters; its type's markers, the type's profile minus the mean of the
profiles of those clusters' types (log fold changes against the same mix of types). Each side is
measured within its own study, so what two studies differ in everywhere (depth, chemistry, batch)
cancels, and the Pearson correlation of a cluster's markers with its predicted type's markers
(`marker_agreement`) says whether the cluster expresses what sets that type apart in the reference: a
cell type the reference lacks, mapped onto its nearest known type, does not.
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Key of the profiles in the reference's `uns`.
PROFILES_KEY = "profiles"


def group_means(X, groups, *, rows=None):
    """`(names, means, counts)`: the sorted distinct `groups` of the rows `rows` of `X` (default: all),
    the mean row per group (a dense groups × genes float32 array; `X`, CSR or dense, is never densified
    or copied) and the rows per group."""
    rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
    codes, names = pd.factorize(pd.Series(np.asarray(groups)), sort=True)
    n_groups = len(names)
    counts = np.bincount(codes, minlength=n_groups)
    indicator = sp.csr_matrix((1.0 / counts[codes], (codes, rows)), shape=(n_groups, X.shape[0]))
    means = indicator @ X
    means = means.toarray() if sp.issparse(means) else np.asarray(means)
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


def marker_agreement(X, clusters, types, profiles):
    """Per query cluster: the correlation of its markers with those of its type (module docstring).

    `X` holds the query's processed values (cells × the model's genes), `clusters` each cell's cluster,
    `types` each cluster's predicted type (a mapping from cluster to label). Both sides contrast the
    same set: a cluster's mean against the mean of the query's clusters, its type's profile against
    the mean of those clusters' types' profiles (so a query of a few types, e.g. only T cells, is
    compared with what tells those types apart in the reference). Clusters whose type has no profile
    get NaN, as do all clusters when they share one type (nothing tells them apart in the reference).

    Returns:
        A `pandas.Series` indexed by cluster.
    """
    names, means, _ = group_means(X, clusters)
    result = pd.Series(np.nan, index=names)
    reference = pd.DataFrame(np.asarray(profiles["means"], dtype=np.float64), index=list(profiles["labels"]))
    known = np.array([types[name] in reference.index for name in names], dtype=bool)
    if known.sum() < 2:
        return result
    query_markers = means[known] - means[known].mean(axis=0)
    profile = reference.loc[[types[name] for name in names[known]]].to_numpy()
    reference_markers = profile - profile.mean(axis=0)
    for name, cluster, kind in zip(names[known], query_markers, reference_markers, strict=True):
        result[name] = _correlation(cluster, kind)
    return result


def _correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else np.nan
