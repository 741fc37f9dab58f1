"""Nearest-neighbour cell-type queries against a bundle's annotated reference.

Label transfer: each query cell's `k` nearest reference cells (euclidean, in the embedding) vote
for their labels with weights `exp(-d / s)`, `d` a neighbour's distance and `s` the cell's mean
distance to its `k` neighbours (a scale-free kernel: the nearest neighbours count most, and
equidistant neighbours count alike). The confidence is the winning label's share of the weight.

Rejection: a cell is predicted 'Unknown' when its confidence is below `min_agreement`, or when its
nearest reference cell is farther than the `distance_quantile` of the reference's own
nearest-other-cell distances (leave-self-out: how far a reference cell is from its nearest
neighbour in the reference).
"""

import dataclasses
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .bundle import Bundle, save_bundle
from .embed import compute_embedding, record_run
from .errors import ScqueryError, check_number
from .io import UNKNOWN, check_labels
from .neighbors import NeighborIndex


def vote(distances, codes, n_labels):
    """Distance-weighted vote (see the module docstring): `(winning code, its weight share)`."""
    n, k = distances.shape
    scale = np.maximum(distances.mean(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    weights = np.exp(-distances / scale)
    rows = np.repeat(np.arange(n), k)
    tally = sp.csr_matrix((weights.ravel(), (rows, codes.ravel())), shape=(n, n_labels))
    winner = np.asarray(tally.argmax(axis=1)).ravel()
    share = tally.max(axis=1).toarray().ravel() / weights.sum(axis=1)
    return winner, np.clip(share, 0.0, 1.0).astype(np.float32)


def query(
    adata,
    bundle: Bundle,
    *,
    k=15,
    min_agreement=0.5,
    distance_quantile=0.99,
    key_added="scquery",
    layer=None,
    use_raw=False,
    gene_key=None,
    min_overlap=0.5,
    bundle_path=None,
    batch_size=8192,
):
    """Predict the cell types of `adata` from its nearest reference cells (in place).

    Writes `obsm['X_' + key_added]` (the embedding, usable as `sc.pp.neighbors(use_rep=...)`),
    `uns[key_added]` (model, parameters, gene overlap, `query_params`) and the obs columns
    `{key_added}_prediction` (categorical, 'Unknown' for rejected cells), `_confidence` (the
    winning label's weight share, in [0, 1]), `_distance` (mean distance to the `k` neighbours),
    `_nearest_label` and `_nearest_dataset` (of the nearest reference cell), `_classifier` (the
    classifier head's most probable type) and `_classifier_probability`.

    Args:
        k: neighbours per query cell (at most the reference's size).
        min_agreement: the least confidence of a prediction.
        distance_quantile: quantile of the reference's leave-self-out nearest distances beyond
            which a cell's nearest reference cell is too far (the cell is 'Unknown').
        layer, use_raw, gene_key, min_overlap: as in `scquery.embed.embed`.
        bundle_path: the bundle's folder, where the neighbour index is cached.

    Returns:
        The matches: one row per query cell and rank (1 = nearest) with `query_cell`, `rank`,
        `reference_cell`, `distance`, `reference_label`, `reference_dataset`.
    """
    reference = bundle.reference
    check_number("k", k, low=1, integer=True)
    if k > reference.n_obs:
        raise ScqueryError(
            f"k={k} is more than the {reference.n_obs} cells of the model's reference; choose k of "
            f"at most {reference.n_obs}."
        )
    check_number("min_agreement", min_agreement, low=0, high=1)
    check_number("distance_quantile", distance_quantile, low=0, high=1, low_open=True)
    embedding, probabilities, overlap = compute_embedding(
        adata,
        bundle,
        layer=layer,
        use_raw=use_raw,
        gene_key=gene_key,
        min_overlap=min_overlap,
        batch_size=batch_size,
    )
    index = NeighborIndex.for_bundle(bundle, bundle_path)
    distances, indices = index.kneighbors(embedding, k)
    threshold = float(np.quantile(index.nearest_distances, distance_quantile))

    labels = reference.obs["label"].astype(str).astype("category")
    datasets = reference.obs["dataset"].astype(str).astype("category")
    names = labels.cat.categories
    winner, confidence = vote(distances, labels.cat.codes.to_numpy()[indices], len(names))
    rejected = (confidence < min_agreement) | (distances[:, 0] > threshold)
    prediction = np.where(rejected, UNKNOWN, names.to_numpy()[winner])
    classes = np.asarray(bundle.classes, dtype=object)
    nearest = indices[:, 0]

    obs = adata.obs
    obs[f"{key_added}_prediction"] = pd.Categorical(
        prediction, categories=[*names.drop(UNKNOWN, errors="ignore"), UNKNOWN]
    )
    obs[f"{key_added}_confidence"] = confidence
    obs[f"{key_added}_distance"] = distances.mean(axis=1)
    obs[f"{key_added}_nearest_label"] = labels.to_numpy()[nearest]
    obs[f"{key_added}_nearest_dataset"] = datasets.to_numpy()[nearest]
    obs[f"{key_added}_classifier"] = pd.Categorical(
        classes[probabilities.argmax(axis=1)], categories=list(bundle.classes)
    )
    obs[f"{key_added}_classifier_probability"] = probabilities.max(axis=1)
    adata.obsm[f"X_{key_added}"] = embedding
    params = {"layer": layer, "use_raw": use_raw, "gene_key": gene_key, "min_overlap": min_overlap}
    record_run(adata, bundle, overlap, params, uns_key=key_added)
    adata.uns[key_added]["query_params"] = {
        "k": int(k),
        "min_agreement": float(min_agreement),
        "distance_quantile": float(distance_quantile),
        "distance_threshold": threshold,
        "weights": "exp(-d / mean distance to the k neighbours)",
        "search": index.description(k),
        "n_reference": int(reference.n_obs),
        "n_unknown": int(rejected.sum()),
    }
    flat = indices.ravel()
    return pd.DataFrame(
        {
            "query_cell": np.repeat(adata.obs_names.to_numpy(), k),
            "rank": np.tile(np.arange(1, k + 1), adata.n_obs),
            "reference_cell": reference.obs_names.to_numpy()[flat],
            "distance": distances.ravel(),
            "reference_label": labels.to_numpy()[flat],
            "reference_dataset": datasets.to_numpy()[flat],
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

    The new cells are embedded with the bundle's model and appended with their labels
    (`obs[label_key]`) and datasets (`obs['dataset']`, or 'extension'); cell types the classifier
    does not know can then be found by `query`. Cells whose names the reference already holds are
    refused (they would count twice). The neighbour index is rebuilt on next use. With `path`, the
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
    embedding, _, _ = compute_embedding(
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # names repeated within the new cells are kept
        reference = ad.concat([bundle.reference, added])
    reference.obs = reference.obs.astype(str).astype("category")
    extended = dataclasses.replace(bundle, reference=reference)
    if path is not None:
        save_bundle(extended, path, overwrite=overwrite)
    return extended
