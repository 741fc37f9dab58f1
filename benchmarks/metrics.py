"""Scores: accuracy and macro-F1 of predicted labels, retrieval mean average precision of an embedding."""

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import NearestNeighbors


def label_scores(y_true, y_pred) -> dict:
    """Accuracy and macro-F1; the F1 average runs over the true labels' classes only.

    A prediction of a class the query does not hold counts as an error but adds no class to the
    average (so reference-only types do not pull macro-F1 to zero).
    """
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    labels = sorted(set(y_true))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def per_type_f1(y_true, y_pred) -> dict:
    """Each type of `y_true`: its F1 (a type never predicted scores 0)."""
    types = sorted(set(np.asarray(y_true, dtype=object)))
    scores = f1_score(y_true, y_pred, labels=types, average=None, zero_division=0)
    return dict(zip(types, scores.tolist(), strict=True))


def retrieval_map(query_emb, query_labels, ref_emb, ref_labels, *, k=100) -> float:
    """Mean over query cells of the average precision of their `k` nearest reference cells.

    scQuery's retrieval metric: rank the reference by Euclidean distance in the embedding; a hit is a
    reference cell of the query cell's type. AP@k = sum over hit ranks r of precision@r, divided by
    min(k, number of reference cells of that type); cells of a type absent from the reference score 0.
    """
    query_labels, ref_labels = np.asarray(query_labels), np.asarray(ref_labels)
    k = min(k, len(ref_labels))
    index = NearestNeighbors(n_neighbors=k).fit(np.asarray(ref_emb, dtype=np.float32))
    _, neighbours = index.kneighbors(np.asarray(query_emb, dtype=np.float32))
    hits = ref_labels[neighbours] == query_labels[:, None]
    precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    types, type_counts = np.unique(ref_labels, return_counts=True)
    relevant = dict(zip(types, np.minimum(type_counts, k), strict=True))
    denominators = np.array([relevant.get(label, 0) for label in query_labels], dtype=float)
    sums = (precision * hits).sum(axis=1)
    ap = np.divide(sums, denominators, out=np.zeros_like(sums), where=denominators > 0)
    return float(ap.mean())
