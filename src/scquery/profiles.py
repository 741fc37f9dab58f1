"""Expression profiles of the reference's cell types, and whether a query cluster shows its type's markers.

A type's profile is the share of its reference cells that express each of the model's genes (its
detection rate) and their mean value, saved in the bundle's reference (`uns['profiles']`); the means
give a query's missing genes their level (`missing_gene_levels`). The genes that define a type
are chosen on these rates: a gene most of a type's cells express and few of another's is that type's,
whatever its level; a gene every type expresses a little more or less of (ribosomal proteins, a
shared programme) is nobody's. A query cluster's markers are its mean minus the query's average type
(each type the query's clusters are mapped to counts once, as the mean of its clusters, so that a
type spanning many clusters is not the baseline it is judged against): measured within the query's
own study, so what two studies differ in everywhere (depth, chemistry, batch) cancels. A cluster
mapped to type T is checked on the genes that define T in the reference, and only on those, in two
ways:

- `marker_agreement`: T's lineage genes, the `DEFINING_GENES` genes detected in the largest share more
  of T's cells than of the mix of types the query's clusters are mapped to (the mean of those types'
  rates, so a query of only T cells is judged on what tells T-cell types apart);
- `unique_markers`: T's own genes, those detected in a larger share of T's cells than of every other
  reference type's; none for a type of fewer than `MIN_OWN_GENE_CELLS` reference cells, whose rates
  are too noisy to pick genes that hold in another study (its clusters are judged on lineage genes).

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
#: How many genes define a type: those whose detection rate in its cells most exceeds the rate in the
#: query's mix of types (or in every other type).
DEFINING_GENES = 50
#: By how much a defining gene's detection rate must exceed the others' (0.3: detected in 30 % more
#: of the type's cells; chosen on the tuning pairs of benchmarks/pairs.py).
MIN_DETECTION_GAIN = 0.3
#: The fewest such genes a type needs to be judged on them.
MIN_DEFINING_GENES = 5
#: The fewest reference cells a type needs to have own genes (chosen on the tuning pairs and the
#: few-label tasks: with 14-18 cells, the genes picked as a type's own do not hold in another study).
MIN_OWN_GENE_CELLS = 20


#: Rows read at a time from data made on demand (`scquery.batches.RowSource`, e.g. from disk).
CHUNK_ROWS = 8192


def group_means(X, groups, *, rows=None, detected=False):
    """`(names, means, counts)`: the sorted distinct `groups` of the rows `rows` of `X` (default: all),
    the mean row per group (a dense groups × genes float32 array; `X`, CSR or dense, is never densified
    or copied; rows made on demand are read `CHUNK_ROWS` at a time) and the rows per group. With
    `detected`, the share of each group's rows with a value above 0 instead of the mean."""
    names, (means,), counts = _group_stats(X, groups, rows, (detected,))
    return names, means, counts


def _group_stats(X, groups, rows, detected):
    """`group_means` of several kinds in one pass over `X`: one array per entry of `detected` (the
    detection rate where true, else the mean)."""
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
    stats = [np.zeros((n_groups, X.shape[1])) for _ in detected]
    for positions, part, values in parts:
        indicator = sp.csr_matrix((1.0 / counts[part], (part, positions)), shape=(n_groups, values.shape[0]))
        for total, rates in zip(stats, detected, strict=True):
            product = indicator @ (_detected(values) if rates else values)
            total += product.toarray() if sp.issparse(product) else np.asarray(product)
    return names.to_numpy(), [total.astype(np.float32) for total in stats], counts


def _detected(values):
    """1.0 where `values` (CSR or dense) is above 0, else 0.0 (a new matrix)."""
    if sp.issparse(values):
        values = values.tocsr(copy=True)
        values.data = (values.data > 0).astype(np.float32)
        return values
    return (np.asarray(values) > 0).astype(np.float32)


def type_profiles(X, labels, *, rows=None):
    """The profiles of the cells `rows` of `X` (default: all), labelled `labels`: `{'labels',
    'detected' (types × genes: the share of the type's cells above 0), 'means' (types × genes: the
    type's mean value), 'cells' (per type)}`, in one pass over `X`."""
    names, (detected, means), counts = _group_stats(X, labels, rows, (True, False))
    return {
        "labels": names.astype(str),
        "detected": detected,
        "means": means,
        "cells": counts.astype(np.int64),
    }


def missing_gene_levels(profiles, measured):
    """`(genes, levels)` for a query lacking the model's genes where `measured` (a boolean per gene) is
    false: their positions and the value each is given instead of 0, its mean over the reference's
    types, each type once (a gene the query does not hold says nothing of its cells, and 0 would read
    as 'not expressed'). None where every gene is measured or the profiles (an older bundle's) hold no
    means."""
    missing = np.flatnonzero(~np.asarray(measured, dtype=bool))
    if not missing.size or profiles is None or "means" not in profiles:
        return None
    return missing, np.asarray(profiles["means"], dtype=np.float32)[:, missing].mean(axis=0)


def merge_profiles(first, second):
    """The profiles of two sets of cells on the same genes taken together (weighted by their cells);
    the means only where both hold them (not an older bundle's)."""
    labels = sorted(set(first["labels"]) | set(second["labels"]))
    kinds = [kind for kind in ("detected", "means") if kind in first and kind in second]
    totals = {kind: np.zeros((len(labels), first["detected"].shape[1])) for kind in kinds}
    cells = np.zeros(len(labels), dtype=np.int64)
    for part in (first, second):
        rows = pd.Index(labels).get_indexer(part["labels"])
        for kind in kinds:
            totals[kind][rows] += part[kind] * np.asarray(part["cells"])[:, None]
        cells[rows] += part["cells"]
    merged = {kind: (total / cells[:, None]).astype(np.float32) for kind, total in totals.items()}
    return {"labels": np.asarray(labels, dtype=str), **merged, "cells": cells}


def marker_agreement(X, clusters, types, profiles, *, measured=None):
    """Per query cluster: the share of its type's lineage genes it expresses (module docstring).

    `X` holds the query's processed values (cells × the model's genes), `clusters` each cell's cluster,
    `types` each cluster's predicted type (a mapping from cluster to label). A type's lineage genes are
    the `DEFINING_GENES` whose detection rate exceeds the mean rate of the clusters' types the most,
    by `MIN_DETECTION_GAIN` or more; a cluster is judged on them when there are `MIN_DEFINING_GENES`.
    `measured` (a boolean per gene; default: all) marks the genes the query holds: a gene it lacks
    (zero-filled, e.g. without an orthologue) says nothing about its cells and is never counted.

    Returns:
        A `pandas.Series` indexed by cluster, in [0, 1]; NaN where a cluster's type has no profile or
        too few such genes, and for every cluster when they all share one type (nothing tells them
        apart in the reference).
    """
    return _shares(X, clusters, types, profiles, measured, _lineage)


def unique_markers(X, clusters, types, profiles, *, measured=None):
    """Per query cluster: the share of its type's own genes it expresses (module docstring).

    As `marker_agreement`, but a type's genes are those detected in more of its cells than of every
    other reference type's (the `DEFINING_GENES` with the largest margin over the highest other rate,
    by `MIN_DETECTION_GAIN` or more); none, so NaN, for a type of fewer than `MIN_OWN_GENE_CELLS` cells.
    """
    return _shares(X, clusters, types, profiles, measured, _own)


def _lineage(rates, cells, row, mix):
    """Per gene, the margin of the rate of type `row` over the mean rate of the `mix`."""
    return rates[row] - mix.mean(axis=0)


def _own(rates, cells, row, mix=None):
    """Per gene, the margin of the rate of type `row` over every other type's (-inf for every gene of
    a type of fewer than `MIN_OWN_GENE_CELLS` cells)."""
    if cells[row] < MIN_OWN_GENE_CELLS:
        return np.full(rates.shape[1], -np.inf)
    return rates[row] - np.delete(rates, row, axis=0).max(axis=0)


def _shares(X, clusters, types, profiles, measured, contrast):
    """The share of each cluster's type's genes (the highest of `contrast(rates, cells, row, mix)` on
    the profiles, `mix` the rates of the clusters' types) that the cluster expresses above the query's average
    type (the mean over the clusters' types of each type's mean cluster), against the mix of those
    types, each once."""
    names, means, _ = group_means(X, clusters)
    result = pd.Series(np.nan, index=names)
    labels = list(profiles["labels"])
    reference = np.asarray(profiles["detected"], dtype=np.float64)
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
        genes = _raised(contrast(reference, profiles["cells"], row, mix), measured)
        if genes.size >= MIN_DEFINING_GENES:
            result[name] = float((cluster[genes] > 0).mean())
    return result


def own_genes(profiles, label, *, measured=None):
    """The columns of `label`'s own genes (those detected in more of its cells than of every other
    type's, as in `unique_markers`), among the `measured` ones; empty for a label without a profile
    or of too few cells."""
    labels = list(profiles["labels"])
    if label not in labels or len(labels) < 2:
        return np.array([], dtype=np.int64)
    rates = np.asarray(profiles["detected"], dtype=np.float64)
    return _raised(_own(rates, profiles["cells"], labels.index(label)), measured)


def _raised(raised, measured):
    """The `DEFINING_GENES` columns of highest `raised` (by `MIN_DETECTION_GAIN` or more), among the
    `measured`."""
    if measured is not None:
        raised = np.where(measured, raised, -np.inf)
    genes = np.argsort(-raised, kind="stable")[:DEFINING_GENES]
    return genes[raised[genes] > MIN_DETECTION_GAIN]
