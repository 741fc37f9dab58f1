"""Cell-type queries against a bundle's annotated reference, in three steps (like scanpy's ingest).

1. Neighbour search (`search`): the query is processed and embedded like the reference, and each
   query cell's `k` nearest reference cells are found.
2. Label transfer and rejection (`transfer`):
   - the kNN vote: each neighbour votes for its label with weight `exp(-d / s)`, `d` its distance
     and `s` the cell's mean distance to its `k` neighbours; a label's share of the weight is its
     vote share;
   - the prediction is the type with the highest mean of the vote share and the classifier head's
     probability (types the classifier was not trained on, added by `extend`, count by the vote
     alone), and that mean is the cell's `confidence`;
   - the query is clustered in its own expression (`cluster_query`: Leiden on a kNN graph of the
     PCA of its processed values; not in the embedding, which is trained to tell the known types
     apart and may map a type it never saw into one of them); a cluster's type is the argmax of
     its cells' mean evidence, and with `majority_voting` every cell of the cluster takes it
     (CellTypist's majority voting);
   - markers (`scquery.profiles`): a cluster mapped to type T is checked on the genes that define
     T in the reference, and only on those: the share of T's lineage genes (those T raises most
     against the mix of types the query's clusters are mapped to) that the cluster expresses above
     the query's average cluster (`marker_agreement`), and the same share of T's own genes (those T
     raises above every other reference type: `unique_markers`). Each side is measured within its own
     study, so what the two studies differ in everywhere cancels; what a condition (a treatment,
     stress, the cell cycle) adds on top of a type is not counted, since it does not define the
     type. A cluster of a type the reference lacks, mapped onto the nearest known type, lacks many
     of that type's genes;
   - novelty: a cell's distance to its nearest reference cell, divided by the typical nearest
     distance among the reference cells of its predicted type (a per-type scale), as a log ratio
     relative to the query's median log ratio (the query's own batch shift); a cluster's novelty is
     its cells' median;
   - a cell is 'Unknown' when it expresses none of the reference genes ('no reference genes'),
     when its confidence is below `min_confidence` ('low confidence'), when its cluster's novelty
     exceeds `novelty_threshold` ('new cluster': the whole cluster sits farther from its types than
     the rest of the query does), or when its cluster expresses less than `min_marker_agreement`
     of its type's lineage genes or less than `min_unique_markers` of its own genes ('markers
     differ'). A lone odd cell in a well-matched cluster keeps its label. The defaults (0.6, 0.7)
     were chosen on the cross-study pairs with each type held out in turn (benchmarks/RESULTS.md).
3. Writing to AnnData (`write_query`): obsm, obs and uns under `key_added`.
"""

import dataclasses
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from .bundle import Bundle, save_bundle
from .embed import compute_embedding, record_run
from .errors import ScqueryError, check_number
from .io import UNKNOWN, check_labels
from .neighbors import NeighborIndex
from .palettes import palette
from .profiles import (
    PROFILES_KEY,
    group_means,
    marker_agreement,
    merge_profiles,
    type_profiles,
    unique_markers,
)
from .propagate import LABEL_SOURCE, USER

#: Why a cell is 'Unknown' (obs '<key>_unknown_reason'); '' for predicted cells.
REASONS = ["", "no reference genes", "low confidence", "new cluster", "markers differ"]


@dataclasses.dataclass
class Neighbors:
    """Step 1's result: the query's embedding, class probabilities and reference neighbours."""

    embedding: np.ndarray
    probabilities: np.ndarray
    distances: np.ndarray
    indices: np.ndarray
    expressed: np.ndarray  # per cell: does it express any reference gene?
    processed: ad.AnnData
    index: NeighborIndex


@dataclasses.dataclass
class Transfer:
    """Step 2's result, one entry per query cell (see the module docstring)."""

    prediction: np.ndarray
    reason: np.ndarray
    confidence: np.ndarray
    knn: np.ndarray
    knn_share: np.ndarray
    novelty: np.ndarray
    cluster: np.ndarray
    cluster_novelty: np.ndarray
    marker_agreement: np.ndarray
    unique_markers: np.ndarray
    labels: pd.Index


def vote(distances, codes, n_labels):
    """Distance-weighted vote (see the module docstring): the cells × labels weight shares."""
    n, k = distances.shape
    scale = np.maximum(distances.mean(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    weights = np.exp(-distances / scale)
    rows = np.repeat(np.arange(n), k)
    tally = sp.csr_matrix((weights.ravel(), (rows, codes.ravel())), shape=(n, n_labels)).toarray()
    return np.clip(tally / weights.sum(axis=1, keepdims=True), 0.0, 1.0).astype(np.float32)


def search(
    adata,
    bundle: Bundle,
    *,
    k=15,
    layer=None,
    use_raw=False,
    gene_key=None,
    min_overlap=0.5,
    gene_map=None,
    species=None,
    batch_size=8192,
):
    """Step 1: embed `adata` like the reference and find each cell's `k` nearest reference cells."""
    embedding, probabilities, processed = compute_embedding(
        adata,
        bundle,
        layer=layer,
        use_raw=use_raw,
        gene_key=gene_key,
        min_overlap=min_overlap,
        gene_map=gene_map,
        species=species,
        batch_size=batch_size,
    )
    index = NeighborIndex.for_bundle(bundle)
    distances, indices = index.kneighbors(embedding, min(k, bundle.reference.n_obs))
    expressed = np.diff(processed.X.indptr) > 0
    return Neighbors(embedding, probabilities, distances, indices, expressed, processed, index)


def cluster_query(values, *, resolution=1.0, n_neighbors=15, n_pcs=50, seed=0):
    """Leiden clusters of the query cells (integer codes), found in the query's own expression.

    `values` (cells × genes, CSR or dense: the processed query, on the model's genes) are reduced to
    `n_pcs` principal components (scanpy's PCA, which keeps sparse data sparse); the cells' kNN graph
    there is built with the project's neighbour search (`NeighborIndex`: exact up to 20,000 cells,
    faiss IVF-Flat above), so it does not depend on pynndescent, and clustered by scanpy's Leiden
    (igraph implementation). Gene space, not the embedding: the embedding is trained to tell the
    reference's types apart and may place a type it never saw inside a known one.
    """
    n = values.shape[0]
    filled = np.asarray(abs(values).sum(axis=1)).ravel() > 0
    if not filled.all():  # cells expressing none of the genes: one cluster of their own, apart
        codes = np.zeros(n, dtype=np.int64)
        if filled.any():
            codes[filled] = cluster_query(
                values[filled], resolution=resolution, n_neighbors=n_neighbors, n_pcs=n_pcs, seed=seed
            )
            codes[~filled] = codes[filled].max() + 1
        return codes
    if n < 3 or not _varies(values):  # nothing to tell apart (the PCA would fail)
        return np.zeros(n, dtype=np.int64)
    holder = ad.AnnData(
        X=values if sp.issparse(values) else np.asarray(values, dtype=np.float32),
        obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)),
    )
    n_pcs = min(n_pcs, n - 1, values.shape[1] - 1)
    if n_pcs >= 2:
        sc.pp.pca(holder, n_comps=n_pcs, random_state=seed)
        points = holder.obsm["X_pca"]
    else:
        points = holder.X.toarray() if sp.issparse(holder.X) else holder.X
    k = min(n_neighbors, n - 1)
    _, indices = NeighborIndex(points, seed=seed).kneighbors(points, k + 1)
    rows = np.repeat(np.arange(n), k + 1)
    graph = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, indices.ravel())), shape=(n, n))
    graph.setdiag(0)
    graph.eliminate_zeros()
    graph = graph.maximum(graph.T).tocsr()
    sc.tl.leiden(
        holder,
        resolution=resolution,
        adjacency=graph,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return holder.obs["leiden"].astype(int).to_numpy()


def _varies(values):
    """Whether the rows of `values` differ at all (some gene's variance is above zero)."""
    if sp.issparse(values):
        return bool(np.any(mean_variance_axis(sp.csr_matrix(values, dtype=np.float64), axis=0)[1] > 0))
    return bool(np.any(np.var(values, axis=0) > 0))


def transfer(
    neighbors: Neighbors,
    bundle: Bundle,
    *,
    min_confidence=0.5,
    novelty_threshold=1.0,
    min_marker_agreement=0.6,
    min_unique_markers=0.7,
    resolution=1.0,
    majority_voting=False,
    seed=0,
):
    """Step 2: the prediction, its confidence and the Unknown calls (see the module docstring)."""
    reference = bundle.reference
    # The model's types first, in its order, then those only `extend` added: one order for every query.
    names = reference.obs["label"].astype(str)
    labels = pd.Index([*bundle.classes, *sorted(set(names) - set(bundle.classes))])
    codes = labels.get_indexer(names)
    shares = vote(neighbors.distances, codes[neighbors.indices], len(labels))
    evidence = combine_evidence(shares, neighbors.probabilities, labels.get_indexer(list(bundle.classes)))
    predicted = evidence.argmax(axis=1)

    cluster = cluster_query(neighbors.processed.X, resolution=resolution, seed=seed)
    ids, cluster_rows = np.unique(cluster, return_inverse=True)
    # Each cluster's most probable type: the argmax of its cells' mean evidence.
    cluster_type = group_means(evidence, cluster_rows)[1].argmax(axis=1)
    if majority_voting:
        predicted = cluster_type[cluster_rows]
    confidence = evidence[np.arange(len(predicted)), predicted]

    scales = _type_scales(neighbors.index.nearest_distances, codes, len(labels))
    ratio = np.log(np.maximum(neighbors.distances[:, 0], 1e-12) / scales[predicted])
    novelty = (ratio - np.median(ratio)).astype(np.float32)
    cluster_novelty = pd.Series(novelty).groupby(cluster).transform("median").to_numpy(np.float32)
    agreement = unique = np.full(len(ids), np.nan, dtype=np.float32)
    profiles = bundle.reference.uns.get(PROFILES_KEY)
    if profiles is None:
        warnings.warn(
            "The model bundle holds no expression profiles of its cell types (it was saved by an older "
            "scquery), so query clusters are not checked for their types' markers; train it again to "
            "add them.",
            stacklevel=3,
        )
    else:
        types = dict(zip(ids, labels.to_numpy()[cluster_type], strict=True))
        X, var = neighbors.processed.X, neighbors.processed.var
        measured = var["scquery_shared"].to_numpy()  # the genes the query holds (`align_genes`)
        agreement = marker_agreement(X, cluster, types, profiles, measured=measured)[ids].to_numpy(np.float32)
        unique = unique_markers(X, cluster, types, profiles, measured=measured)[ids].to_numpy(np.float32)
    cluster_agreement, cluster_unique = agreement[cluster_rows], unique[cluster_rows]

    reason = unknown_reasons(
        neighbors.expressed,
        confidence,
        cluster_novelty,
        cluster_agreement,
        cluster_unique,
        min_confidence=min_confidence,
        novelty_threshold=novelty_threshold,
        min_marker_agreement=min_marker_agreement,
        min_unique_markers=min_unique_markers,
    )
    return Transfer(
        prediction=np.where(reason > 0, UNKNOWN, labels.to_numpy()[predicted]),
        reason=reason,
        confidence=confidence.astype(np.float32),
        knn=labels.to_numpy()[shares.argmax(axis=1)],
        knn_share=shares.max(axis=1),
        novelty=novelty,
        cluster=cluster,
        cluster_novelty=cluster_novelty,
        marker_agreement=cluster_agreement,
        unique_markers=cluster_unique,
        labels=labels,
    )


def combine_evidence(shares, probabilities, trained):
    """Each cell's evidence for each label (cells × labels): the mean of its vote `shares` and the
    classifier's `probabilities` (cells × classes; `trained`: the label of each class); a cell whose
    vote favours a label the classifier was not trained on (added by `extend`) has the vote alone."""
    spread = np.zeros_like(shares)
    spread[:, trained] = probabilities
    evidence = (shares + spread) / 2
    added = np.setdiff1d(np.arange(shares.shape[1]), trained)
    from_vote = np.isin(shares.argmax(axis=1), added)
    evidence[from_vote] = shares[from_vote]
    return evidence


def unknown_reasons(
    expressed,
    confidence,
    cluster_novelty,
    cluster_agreement,
    cluster_unique,
    *,
    min_confidence,
    novelty_threshold,
    min_marker_agreement,
    min_unique_markers,
):
    """Per cell, the code of why it is 'Unknown' (an index into `REASONS`; 0: predicted): the first
    of `REASONS` that holds (see the module docstring)."""
    reason = np.zeros(len(confidence), dtype=np.int64)
    reason[(cluster_agreement < min_marker_agreement) | (cluster_unique < min_unique_markers)] = 4
    reason[cluster_novelty > novelty_threshold] = 3
    reason[confidence < min_confidence] = 2
    reason[~np.asarray(expressed, dtype=bool)] = 1
    return reason


def _type_scales(nearest_distances, codes, n_labels):
    """Per reference label: the median distance of its cells to their nearest other reference cell
    (over the cells the index measured: a sample of a large type; NaN marks the others)."""
    measured = np.isfinite(nearest_distances)
    medians = pd.Series(nearest_distances[measured]).groupby(codes[measured]).median()
    scales = medians.reindex(range(n_labels)).to_numpy(np.float64)
    fallback = np.median(nearest_distances[measured])
    scales = np.where(np.isfinite(scales) & (scales > 0), scales, fallback)
    return np.maximum(scales, 1e-12)


def query(
    adata,
    bundle: Bundle,
    *,
    k=15,
    min_confidence=0.5,
    novelty_threshold=1.0,
    min_marker_agreement=0.6,
    min_unique_markers=0.7,
    resolution=1.0,
    majority_voting=False,
    key_added="scquery",
    layer=None,
    use_raw=False,
    gene_key=None,
    min_overlap=0.5,
    gene_map=None,
    species=None,
    batch_size=8192,
    seed=0,
):
    """Predict the cell types of `adata` from the reference and the classifier (in place).

    Runs the three steps of the module docstring. Writes `obsm['X_' + key_added]` (the embedding,
    usable as `sc.pp.neighbors(use_rep=...)`), `uns[key_added]` (model, parameters, gene overlap,
    the detected input `values`, `species`, `gene_map` when genes were mapped, `query_params`) and
    the obs columns `{key_added}_prediction` (categorical, 'Unknown' for rejected cells),
    `_confidence` (mean of vote share and classifier probability of the predicted type),
    `_unknown_reason`, `_novelty` and `_cluster_novelty`, `_marker_agreement` and `_unique_markers`
    (of the cell's cluster), `_cluster` (the query's Leiden cluster), `_knn` and `_knn_share` (the
    vote's own answer), `_classifier` and `_classifier_probability` (the classifier head's),
    `_distance` (mean distance to the `k` neighbours), `_nearest_label` and `_nearest_dataset` (of
    the nearest reference cell).

    Args:
        k: reference neighbours per query cell.
        min_confidence: the least confidence of a prediction.
        novelty_threshold: the largest cluster novelty (log distance ratio, see the module
            docstring) of predicted cells; 1.0 = e times farther than the query's median.
        min_marker_agreement: the least share of its type's lineage genes a cluster must express
            for its cells' predictions (see the module docstring); 0 turns the check off.
        min_unique_markers: the same for its type's own genes (those it raises above every other
            reference type); 0 turns the check off.
        resolution: Leiden resolution of the query clusters (higher: more, smaller clusters).
        majority_voting: give each query cluster its most probable type.
        key_added: name of the results (default 'scquery'; the same meaning as in `embed`).
        layer, use_raw, gene_key, min_overlap, gene_map, species: as in `scquery.embed.embed`
            (a query of another species: its genes mapped onto the reference's).
        seed: seed of the query's clustering.

    Returns:
        The matches: one row per query cell and rank (1 = nearest) with `query_cell`, `rank`,
        `reference_cell`, `distance`, `reference_label`, `reference_dataset`.
    """
    reference = bundle.reference
    check_number("k", k, low=1, integer=True)
    if k > reference.n_obs:
        raise ScqueryError(
            f"k={k} is more than the {reference.n_obs:,} cells of the model's reference; choose k of "
            f"at most {reference.n_obs}."
        )
    check_number("min_confidence", min_confidence, low=0, high=1)
    check_number("novelty_threshold", novelty_threshold, low=0, low_open=True)
    check_number("min_marker_agreement", min_marker_agreement, low=0, high=1)
    check_number("min_unique_markers", min_unique_markers, low=0, high=1)
    check_number("resolution", resolution, low=0, low_open=True)
    neighbors = search(
        adata,
        bundle,
        k=k,
        layer=layer,
        use_raw=use_raw,
        gene_key=gene_key,
        min_overlap=min_overlap,
        gene_map=gene_map,
        species=species,
        batch_size=batch_size,
    )
    result = transfer(
        neighbors,
        bundle,
        min_confidence=min_confidence,
        novelty_threshold=novelty_threshold,
        min_marker_agreement=min_marker_agreement,
        min_unique_markers=min_unique_markers,
        resolution=resolution,
        majority_voting=majority_voting,
        seed=seed,
    )
    params = {
        "k": int(neighbors.indices.shape[1]),
        "min_confidence": float(min_confidence),
        "novelty_threshold": float(novelty_threshold),
        "min_marker_agreement": float(min_marker_agreement),
        "min_unique_markers": float(min_unique_markers),
        "resolution": float(resolution),
        "majority_voting": bool(majority_voting),
        "seed": int(seed),
    }
    run = {
        "layer": layer,
        "use_raw": use_raw,
        "gene_key": gene_key,
        "min_overlap": min_overlap,
        "species": species,
    }
    return write_query(adata, bundle, neighbors, result, params, run, key_added=key_added)


def write_query(
    adata, bundle: Bundle, neighbors: Neighbors, result: Transfer, params, run, *, key_added="scquery"
):
    """Step 3: write the results into `adata` (see `query`) and return the matches table; `params`
    are the query's options, `run` the options of reading the values (as `embed` records them)."""
    reference = bundle.reference
    labels = reference.obs["label"].astype(str).to_numpy()
    datasets = reference.obs["dataset"].astype(str).to_numpy()
    classes = np.asarray(bundle.classes, dtype=object)
    nearest = neighbors.indices[:, 0]
    known = [name for name in result.labels if name != UNKNOWN]
    obs = adata.obs
    obs[f"{key_added}_prediction"] = pd.Categorical(result.prediction, categories=[*known, UNKNOWN])
    # scanpy's way: one colour per category, the same for every query of this model (scquery.pl)
    adata.uns[f"{key_added}_prediction_colors"] = list(palette([*known, UNKNOWN]).values())
    obs[f"{key_added}_confidence"] = result.confidence
    obs[f"{key_added}_unknown_reason"] = pd.Categorical(
        np.asarray(REASONS, dtype=object)[result.reason], categories=REASONS
    )
    obs[f"{key_added}_novelty"] = result.novelty
    obs[f"{key_added}_cluster_novelty"] = result.cluster_novelty
    obs[f"{key_added}_marker_agreement"] = result.marker_agreement
    obs[f"{key_added}_unique_markers"] = result.unique_markers
    obs[f"{key_added}_cluster"] = pd.Categorical(result.cluster.astype(str))
    obs[f"{key_added}_knn"] = pd.Categorical(result.knn, categories=known)
    obs[f"{key_added}_knn_share"] = result.knn_share
    obs[f"{key_added}_classifier"] = pd.Categorical(
        classes[neighbors.probabilities.argmax(axis=1)], categories=list(bundle.classes)
    )
    obs[f"{key_added}_classifier_probability"] = neighbors.probabilities.max(axis=1)
    obs[f"{key_added}_distance"] = neighbors.distances.mean(axis=1)
    obs[f"{key_added}_nearest_label"] = labels[nearest]
    obs[f"{key_added}_nearest_dataset"] = datasets[nearest]
    adata.obsm[f"X_{key_added}"] = neighbors.embedding
    record_run(adata, bundle, neighbors.processed, {"key_added": key_added, **run}, uns_key=key_added)
    k = params["k"]
    adata.uns[key_added]["query_params"] = {
        **params,
        "search": neighbors.index.description(k),
        "n_reference": int(reference.n_obs),
        "n_clusters": int(len(np.unique(result.cluster))),
        "n_unknown": int((result.reason > 0).sum()),
        "n_unknown_by_reason": {
            REASONS[code]: int((result.reason == code).sum()) for code in range(1, len(REASONS))
        },
    }
    flat = neighbors.indices.ravel()
    return pd.DataFrame(
        {
            "query_cell": np.repeat(adata.obs_names.to_numpy(), k),
            "rank": np.tile(np.arange(1, k + 1), adata.n_obs),
            "reference_cell": reference.obs_names.to_numpy()[flat],
            "distance": neighbors.distances.ravel(),
            "reference_label": labels[flat],
            "reference_dataset": datasets[flat],
        }
    )


def summarize(adata, *, groupby=None, matches=None, key="scquery"):
    """Per query dataset (`obs['dataset']`, when present) and `groupby` group: what the cells are.

    One row per group: `n_cells`, `mean_distance`, the share of each predicted type
    (`fraction <type>`), and the reference dataset and label nearest the group's cells most often
    with their shares (`nearest_dataset`, `nearest_dataset_share`, `nearest_label`,
    `nearest_label_share`), counted over `matches` (all `k` neighbours, as `query` returns them)
    or, without them, over each cell's nearest reference cell.
    """
    obs = adata.obs
    prediction = f"{key}_prediction"
    if prediction not in obs:
        raise ScqueryError(f"The data has no obs['{prediction}']; run the query first.")
    if groupby is not None and groupby not in obs:
        raise ScqueryError(f"The data has no obs column {groupby!r} to group by; choose another.")
    keys = [c for c in ("dataset", groupby) if c is not None and c in obs]
    groups = obs[keys].astype(str) if keys else pd.DataFrame({"group": "all"}, index=obs.index)
    keys = list(groups.columns)
    if matches is None:
        matches = pd.DataFrame(
            {
                "query_cell": obs.index,
                "reference_label": obs[f"{key}_nearest_label"].to_numpy(),
                "reference_dataset": obs[f"{key}_nearest_dataset"].to_numpy(),
            }
        )
    cells = groups.assign(prediction=obs[prediction].astype(str), distance=obs[f"{key}_distance"])
    grouped = cells.groupby(keys)
    summary = pd.DataFrame({"n_cells": grouped.size(), "mean_distance": grouped["distance"].mean()})
    shares = pd.crosstab([cells[c] for c in keys], cells["prediction"], normalize="index")
    summary = summary.join(shares.add_prefix("fraction "))
    located = groups.iloc[_query_rows(obs.index, matches["query_cell"])].reset_index(drop=True)
    nearest = {"reference_dataset": "nearest_dataset", "reference_label": "nearest_label"}
    for column, name in nearest.items():
        counts = pd.crosstab(
            [located[c] for c in keys], matches[column].astype(str).to_numpy(), normalize="index"
        )
        summary[name] = counts.idxmax(axis=1)
        summary[f"{name}_share"] = counts.max(axis=1)
    return summary.reset_index()


def _query_rows(names, query_cells):
    """The row of each match's query cell: by name, or by position where names repeat (the
    matches of `query` list each cell's neighbours in the data's order)."""
    if names.is_unique:
        rows = names.get_indexer(query_cells)
        if (rows < 0).any():
            raise ScqueryError(
                "The matches name query cells the data does not hold; give the matches of this data."
            )
        return rows
    n, k = len(names), len(query_cells) // max(len(names), 1)
    if n * k != len(query_cells) or not np.array_equal(np.repeat(names.to_numpy(), k), query_cells):
        raise ScqueryError(
            "The query's cell names repeat and the matches are not in its order; give the matches "
            "`query` returned for this data, or make the names unique (obs_names_make_unique)."
        )
    return np.repeat(np.arange(n), k)


def extend(
    bundle: Bundle,
    adata,
    *,
    label_key,
    path=None,
    overwrite=False,
    layer=None,
    use_raw=False,
    gene_key=None,
    min_overlap=0.5,
):
    """A bundle whose reference also holds `adata`'s annotated cells (no retraining).

    The new cells are embedded with the bundle's model and appended with their labels (`obs[label_key]`;
    `obs['label_source']` 'user') and datasets (`obs['dataset']`, or 'extension'); cell types the
    classifier does not know can then be found by `query`. Cells whose names the reference already holds
    are refused (they would count twice). The neighbour index is rebuilt on next use. With `path`, the
    new bundle is also saved there (`save_bundle`: an existing bundle is replaced only with
    `overwrite`). `layer`, `use_raw`, `gene_key`, `min_overlap`: as in `scquery.embed.embed`.
    """
    source = adata.uns.get("scquery", {}).get("source", "the new reference")
    check_labels(adata, label_key, source, min_classes=1)
    held = adata.obs_names.isin(bundle.reference.obs_names)
    if held.any():
        raise ScqueryError(
            f"{int(held.sum())} cells of {source} (e.g. {adata.obs_names[held][0]!r}) are already in "
            "the model's reference; extend it with new cells only (or give the cells distinct names)."
        )
    embedding, _, processed = compute_embedding(
        adata, bundle, layer=layer, use_raw=use_raw, gene_key=gene_key, min_overlap=min_overlap
    )
    dataset = adata.obs["dataset"].astype(str).to_numpy() if "dataset" in adata.obs else "extension"
    added = ad.AnnData(
        obs=pd.DataFrame(
            {"label": adata.obs[label_key].astype(str).to_numpy(), "dataset": dataset},
            index=adata.obs_names.copy(),
        ),
        obsm={"X_scquery": embedding},
    )
    if LABEL_SOURCE in bundle.reference.obs:  # the user's labels (`scquery.propagate`)
        added.obs[LABEL_SOURCE] = USER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # names repeated within the new cells are kept
        reference = ad.concat([bundle.reference, added])
    reference.obs = reference.obs.astype(str).astype("category")
    if PROFILES_KEY in bundle.reference.uns:
        added_profiles = type_profiles(processed.X, added.obs["label"].to_numpy())
        reference.uns[PROFILES_KEY] = merge_profiles(bundle.reference.uns[PROFILES_KEY], added_profiles)
    extended = dataclasses.replace(bundle, reference=reference)
    if path is not None:
        save_bundle(extended, path, overwrite=overwrite)
    return extended
