"""Expression profiles of the reference's cell types, and how well a query group shows its type's markers.

A type's profile is the mean of its reference cells' processed values (log-normalized, on the model's
genes), saved in the bundle's reference (`uns['profiles']`). The query is judged in groups
(`judged_groups`): the cells of one query cluster predicted as one type. A group of type T is compared
with the query's other types, and T's profile with the same types' profiles in the reference, on the
genes that define T, each gene weighed by how specific it is to a few types (`specificity`: genes every
type expresses, such as ribosomal proteins, weigh little). `group_features` measures, per group:

- `own_markers`: how much of T's own genes' rise it keeps: the genes T raises above every other
  reference type, or, where T has none (two close types, e.g. naive and memory CD4 T), those its
  lineage raises above every type outside it (`lineages`: T, then T with its nearest types, ...), against
  the query's types outside that lineage;
- `lineage_markers`: the same for the genes T's lineage (T with its nearest types) raises above every
  type outside it (T-cell genes such as CD3 for CD8 T), against the query's types outside the lineage;
- `query_markers`: the same for the genes T raises most against the query's other types (T-cell
  lineage genes for CD8 T in a blood sample; what tells T-cell types apart in a query of T cells).

Contrasts are taken within each study (the group against the query's other types, each type once, so
a type split over many clusters does not make up the baseline; T against the same types in the
reference), so what two studies differ in everywhere (depth, chemistry, batch) cancels. A cell type the
reference lacks, mapped onto its nearest known type, keeps little of that type's own and lineage genes
(NK cells read as CD8 T lack CD3 and CD8; acinar cells read as ductal lack KRT19 and CFTR), while a known
type under a treatment, stress or the cell cycle keeps them: whatever else the condition raises does
not define the type and is not counted. `scquery.calibration` turns the three into a probability.
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
#: A rise of a quarter, on the log scale of the profiles.
RAISED = np.log(1.25)


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


#: A type's cells in a query cluster form a group of their own from this many; fewer join the group
#: of the cluster's most probable type.
MIN_GROUP_CELLS = 10
#: What each group is measured on (`group_features`'s columns), in this order.
MARKER_FEATURES = ("own_markers", "lineage_markers", "query_markers")


def judged_groups(clusters, predicted, cluster_types):
    """Per cell, the code of the group it is judged in (0, 1, ...), and each group's type.

    A group holds the cells of one query cluster (`clusters`: integer codes) predicted as one type
    (`predicted`, a label per cell) where there are `MIN_GROUP_CELLS` of them; the cluster's other
    cells join the group of the cluster's type (`cluster_types[code]`)."""
    frame = pd.DataFrame({"cluster": np.asarray(clusters), "type": np.asarray(predicted, dtype=object)})
    sizes = frame.groupby(["cluster", "type"])["cluster"].transform("size").to_numpy()
    main = np.asarray(cluster_types, dtype=object)[frame["cluster"].to_numpy()]
    frame["type"] = np.where(sizes >= MIN_GROUP_CELLS, frame["type"].to_numpy(), main)
    codes = frame.groupby(["cluster", "type"], sort=True).ngroup().to_numpy(np.int64)
    return codes, frame.groupby(codes)["type"].first().to_numpy()


def specificity(means):
    """Per gene, how specific its expression is to few types (the tau index over the types' linear
    means `expm1(means)`): 0 where every type expresses it alike, 1 where one type alone does; 0 for a
    gene no type expresses."""
    linear = np.expm1(np.maximum(np.asarray(means, dtype=np.float64), 0))
    top = linear.max(axis=0)
    tau = (1 - linear / np.where(top > 0, top, 1)).sum(axis=0) / max(linear.shape[0] - 1, 1)
    return np.where(top > 0, tau, 0.0)


def lineages(means, weights):
    """Per type (row of `means`), its lineages from itself upward: lists of type rows, the type alone
    first, then the nearest branch holding it, and so on (the whole reference last). The branches are
    those of a hierarchical clustering of the types (average linkage, correlation distance) on the
    genes `weights` (`specificity`) marks as specific."""
    from scipy.cluster.hierarchy import linkage, to_tree

    n = means.shape[0]
    specific = (weights > 0.5) & (means.max(axis=0) > 0.1)
    if n < 3 or specific.sum() < 2:
        return [[[row], list(range(n))] for row in range(n)]
    centred = means[:, specific] - means[:, specific].mean(axis=0)
    found = [None] * n
    stack = [(to_tree(linkage(centred, method="average", metric="correlation")), [])]
    while stack:
        node, above = stack.pop()
        path = [sorted(node.pre_order()), *above]
        if node.is_leaf():
            found[node.id] = path
        else:
            stack += [(node.left, path), (node.right, path)]
    return found


def group_features(X, groups, types, profiles, *, measured=None):
    """Per query group: `MARKER_FEATURES` (module docstring), each in [0, 1].

    `X` holds the query's processed values (cells × the model's genes), `groups` each cell's group
    (integer codes, `judged_groups`), `types` each group's type. A gene the query lacks (`measured`
    false: zero-filled, e.g. without an orthologue) says nothing about its cells and is never counted.
    A type's defining genes are the `DEFINING_GENES` it raises most, by a quarter or more; a group is
    judged on them where there are `MIN_DEFINING_GENES`. Its retention of them is the mean, weighted
    by the genes' `specificity`, of how much of the reference's rise the group shows, between 0 and 1.

    Returns:
        A `pandas.DataFrame` indexed by group; NaN where a group's type has no profile or too few
        such genes, or the query holds no other type to contrast it with (a query of one type).
    """
    names, means, counts = group_means(X, groups)
    result = pd.DataFrame(np.nan, index=names, columns=list(MARKER_FEATURES))
    labels = list(profiles["labels"])
    reference = np.asarray(profiles["means"], dtype=np.float64)
    types = np.asarray(types, dtype=object)[names]
    measured = np.ones(reference.shape[1], dtype=bool) if measured is None else np.asarray(measured, bool)
    weights = specificity(reference)
    branches = lineages(reference, weights)
    mapped = [label for label in dict.fromkeys(types) if label in labels]
    # each type of the query once: its groups' cells together
    query_types = {
        label: np.average(means[types == label], axis=0, weights=counts[types == label]) for label in mapped
    }

    def contrasts(group, label, against):
        """The group's mean minus the query's types `against` (each once), and the same in the reference."""
        rows = [labels.index(other) for other in against]
        return (
            means[group] - np.mean([query_types[other] for other in against], axis=0),
            reference[labels.index(label)] - reference[rows].mean(axis=0),
        )

    def retention(query, raised, genes):
        kept = np.clip(query[genes] / raised[genes], 0, 1)
        return float(np.average(kept, weights=np.maximum(weights[genes] * raised[genes], 1e-6)))

    for group, label in enumerate(types):
        if label not in mapped:
            continue
        others = [other for other in mapped if other != label]
        if others:
            query, raised = contrasts(group, label, others)
            genes = _raised(raised * weights, measured, least=raised)
            if genes.size >= MIN_DEFINING_GENES:
                result.iloc[group, 2] = retention(query, raised, genes)
        row = labels.index(label)
        for branch in branches[row][:-1]:
            outside = [other for other in mapped if labels.index(other) not in branch]
            rise = reference[branch].min(axis=0) - np.delete(reference, branch, axis=0).max(axis=0)
            genes = _raised(rise, measured)
            if not outside or genes.size < MIN_DEFINING_GENES:
                continue
            query, raised = contrasts(group, label, outside)
            genes = genes[raised[genes] > 0]
            if genes.size < MIN_DEFINING_GENES:
                continue
            kept = retention(query, raised, genes)
            if np.isnan(result.iloc[group, 0]):
                result.iloc[group, 0] = kept  # its own genes, or its lineage's where it has none
            if len(branch) > 1:
                result.iloc[group, 1] = kept  # its lineage's genes
                break
    return result


def own_genes(profiles, label, *, measured=None):
    """The columns of `label`'s own genes (those it raises above every other type's profile), among the
    `measured` ones; empty for a label without a profile."""
    labels = list(profiles["labels"])
    if label not in labels or len(labels) < 2:
        return np.array([], dtype=np.int64)
    reference = np.asarray(profiles["means"], dtype=np.float64)
    row = labels.index(label)
    return _raised(reference[row] - np.delete(reference, row, axis=0).max(axis=0), measured)


def _raised(order, measured, *, least=None):
    """The `DEFINING_GENES` columns of highest `order` among the `measured`, whose rise (`least`,
    default `order`) is a quarter or more."""
    least = order if least is None else least
    if measured is not None:
        order = np.where(measured, order, -np.inf)
    order = np.where(least > RAISED, order, -np.inf)
    genes = np.argsort(-order, kind="stable")[:DEFINING_GENES]
    return genes[np.isfinite(order[genes])]
