"""Reconstruction error as an Unknown signal: measured on every held-out task, not used by the query.

The first pretraining stage is a tied denoising autoencoder that learnt to rebuild reference cells from
corrupted copies (`PretrainedEncoder.autoencoder`). Rebuilt by it, a query cell of a type the reference
lacks, read as its nearest known type, might hold that type's own genes (`scquery.profiles.own_genes`)
higher than the cell does. Per cell: the mean positive residual (reconstruction minus the cell) over its
predicted type's own genes, as the log ratio to the query's median cell (`'query'`), or first divided by
the same shortfall among the reference's cells of that type (`'per type'`); per query cluster, its cells'
median, as the query's other cluster-level signals are judged. A rule would need one threshold above every
known cluster and below the held-out type's clusters on every task.
"""

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from scquery.imputation import first_autoencoder
from scquery.pretrain import stack_encoder
from scquery.profiles import own_genes
from scquery.query import UNKNOWN, search, transfer
from scquery.rules import QueryOptions

#: Options under which every cell that expresses a reference gene keeps its most probable type.
EVERY_TYPE = QueryOptions(
    min_confidence=0.0, novelty_threshold=1e9, min_marker_agreement=0.0, min_unique_markers=0.0
)


def shortfall(encoder, bundle, X, predicted, *, measured=None, chunk_size=4096):
    """Per cell of `X` (processed values): how far the autoencoder's reconstruction holds its
    `predicted` type's own genes above the cell (the mean positive residual over them)."""
    layer = first_autoencoder(encoder.autoencoder, encoder.activation)
    scaling = stack_encoder(
        X.shape[1], [], activation=encoder.activation, seed=bundle.seed, scale=bundle.preprocess.get("scale")
    )
    profiles = bundle.reference.uns["profiles"]
    genes = {label: own_genes(profiles, label, measured=measured) for label in np.unique(predicted)}
    result = np.zeros(X.shape[0])
    for start in range(0, X.shape[0], chunk_size):
        block = X[start : start + chunk_size]
        block = np.asarray(block.toarray() if hasattr(block, "toarray") else block, dtype=np.float32)
        if scaling is not None:
            block = keras.ops.convert_to_numpy(scaling(block))
        residual = np.maximum(keras.ops.convert_to_numpy(layer(block)) - block, 0.0)
        for label, columns in genes.items():
            rows = np.flatnonzero(predicted[start : start + chunk_size] == label)
            if columns.size and rows.size:
                result[start + rows] = residual[rows][:, columns].mean(axis=1)
    return result


def measure(encoder, bundle, reference, query_data, held):
    """The signal's separation on one held-out task (`held`: the held-out type's query cells)."""
    neighbors = search(query_data, bundle, EVERY_TYPE)
    found = transfer(neighbors, bundle, EVERY_TYPE)
    predicted = np.asarray(found.prediction, dtype=object)
    measured = neighbors.alignment.shared
    query_side = shortfall(encoder, bundle, neighbors.processed, predicted, measured=measured)
    labelled = reference[reference.obs_names.isin(bundle.reference.obs_names)]
    processed = search(labelled, bundle, EVERY_TYPE).processed
    labels = bundle.reference.obs["label"].astype(str).reindex(labelled.obs_names).to_numpy()
    typical = pd.Series(shortfall(encoder, bundle, processed, labels)).groupby(labels).median()
    floor = 1e-6
    scores = {
        "query": np.log(query_side + floor),
        "per type": np.log(query_side + floor)
        - np.log(typical.reindex(predicted).fillna(typical.median()).to_numpy() + floor),
    }
    row = {}
    expressed = predicted != UNKNOWN
    for name, score in scores.items():
        score = score - np.median(score[expressed])
        clusters = pd.Series(score).groupby(found.cluster).transform("median").to_numpy()
        novel = pd.Series(held).groupby(found.cluster).transform("mean").to_numpy() > 0.5
        row[f"{name} AUROC"] = float(roc_auc_score(held[expressed], score[expressed]))
        row[f"{name} highest known cluster"] = float(clusters[~novel].max())
        row[f"{name} held-out clusters"] = float(np.median(clusters[held])) if held.any() else np.nan
        # the best any threshold does on this task without rejecting a known cluster
        row[f"{name} caught above known"] = float((clusters[held] > clusters[~novel].max()).mean())
    return row
