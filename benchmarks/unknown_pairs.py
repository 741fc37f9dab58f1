"""Unknown calls on the tuning and the validation pairs (`pairs.TUNING`, `pairs.VALIDATION`), with the
peers' own rejection beside them.

Every pair (the shared ones of `crossstudy_tasks` and those of `pairs`) is run whole and with each type
of `pairs.HELD_OUT` removed from its reference in turn (one model each). A query cell is *new* when its
type is not among the reference's (the held-out type, and the query types the reference never had),
*known* otherwise. Per task and method:

- the whole trade-off: the share of new cells called Unknown (caught) against the share of known cells
  called Unknown, as the method's rejection score moves, its AUROC (new against known cells), and the
  point of the method's default;
- macro-F1 over the known cells ('Unknown' counts as an error) of scquery's prediction, of its
  classifier head and of each peer;
- where the query has a condition (`obs['condition']`), the Unknown share of its known cells in each.

scquery's score is the calibrated `scquery_unknown_score` of the cell's group, the Unknown rules before
it held at their defaults (a cell they reject counts as rejected at every threshold); its default
point is `max_unknown_score=0.5`. The peers' rejection: CellTypist's highest probability (its
`p_thres`, default 0.5), and scmap-cluster's cosine similarity to the nearest type centroid of the
reference's highly variable genes (default 0.7). Peers get both sides on one gene space
(`pairs.on_shared_genes`). A query scquery refuses for too few of the model's genes is run again with
`min_overlap=LOW_OVERLAP`, and the refusal recorded.
"""

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from scquery.errors import ScqueryError
from scquery.query import UNKNOWN, query
from scquery.train import train

from . import crossstudy_tasks, pairs
from .baselines import log_normalized, logistic_regression, pca_knn, reference_hvgs
from .methods import scquery_config
from .metrics import label_scores
from .quality import celltypist_predictions

#: Each method's rejection threshold at its default, on its score (higher: more likely new).
DEFAULTS = {"scquery": 0.5, "CellTypist": 1 - 0.5, "scmap-cosine": 1 - 0.7}
#: The least gene overlap a query refused at the default (0.5) is run again with.
LOW_OVERLAP = 0.2
#: The thresholds a curve is drawn at (on each method's score).
CURVE = np.round(np.linspace(0, 1, 21), 2)


def all_tasks(log=print):
    """The shared pairs' tasks, then the cached pairs' (each pair whole, then each held-out type)."""
    yield from crossstudy_tasks.tasks()
    yield from pairs.tasks(log=log)


def split_of(task):
    return getattr(task, "split", None) or pairs.split_of(task.pair)


def scmap_cosine(reference, query, *, reference_values, query_values):
    """scmap-cluster's model: each type's centroid over the reference's highly variable genes, each
    query cell's cosine similarity to them. Returns (nearest type, its similarity)."""
    ref_log, query_log = log_normalized(reference, reference_values), log_normalized(query, query_values)
    genes = reference_hvgs(ref_log)
    labels = ref_log.obs["label"].astype(str).to_numpy()
    types = np.unique(labels)
    X = ref_log[:, genes].X
    centroids = np.vstack([np.asarray(X[labels == t].mean(axis=0)).ravel() for t in types])
    Q = np.asarray(query_log[:, genes].X.todense())
    norms = np.linalg.norm(Q, axis=1, keepdims=True) * np.linalg.norm(centroids, axis=1)
    cosine = (Q @ centroids.T) / np.where(norms > 0, norms, 1)
    return types[cosine.argmax(axis=1)], cosine.max(axis=1)


class _Split:
    """What `quality.celltypist_predictions` reads."""

    def __init__(self, reference, query, task):
        self.reference, self.query = reference, query
        self.values, self.query_values = task.reference_values, task.query_values
        self.task, self.fold = task.name, "-"


def _scquery(task, seed):
    bundle = train(task.reference, label_key="label", config=scquery_config(quick=False), seed=seed)
    adata = task.query.copy()
    species, refused = getattr(task, "query_species", None), None
    try:
        query(adata, bundle, species=species, matches=False)
    except ScqueryError as error:  # a query of too few of the model's genes: what a user would do
        refused = f"{error} (run again with min_overlap={LOW_OVERLAP})"
        query(adata, bundle, species=species, matches=False, min_overlap=LOW_OVERLAP)
    obs = adata.obs
    reason = obs["scquery_unknown_reason"].astype(str).to_numpy()
    score = obs["scquery_unknown_score"].to_numpy(np.float64)
    # the rules before the calibrated one, at their defaults: rejected at every threshold
    before = (reason != "") & (reason != "markers differ")
    score = np.where(before, 2.0, np.nan_to_num(score, nan=0.0))
    return {
        "prediction": obs["scquery_prediction"].astype(str).to_numpy(),
        "classifier": obs["scquery_classifier"].astype(str).to_numpy(),
        "score": score,
        "reason": reason,
        "calibration": bundle.calibration.get("fitted", {}),
        "refused": refused,
    }


def _peers(task, seed, log):
    if getattr(task, "query_species", None) is None:  # the shared pairs' tasks: one gene space
        reference, query_data = task.reference, task.query
    else:
        reference, query_data = pairs.on_shared_genes(task)
    values = {"reference_values": task.reference_values, "query_values": task.query_values}
    ref_log = log_normalized(reference, task.reference_values)
    query_log = log_normalized(query_data, task.query_values)
    out = {
        "PCA + kNN": pca_knn(ref_log, query_log, values="log1p", seed=seed)["predictions"],
        "logistic regression": logistic_regression(ref_log, query_log, values="log1p", seed=seed)[
            "predictions"
        ],
    }
    scores = {}
    nearest, similarity = scmap_cosine(reference, query_data, **values)
    out["scmap-cosine"], scores["scmap-cosine"] = nearest, 1 - similarity
    table = celltypist_predictions(_Split(reference, query_data, task), probability=True)
    if table is None:
        log("  CellTypist not configured (SCQUERY_BENCH_CELLTYPIST_PYTHON): left out")
    else:
        out["CellTypist"] = table["predicted_labels"].to_numpy()
        scores["CellTypist"] = 1 - table["probability"].to_numpy(np.float64)
    return out, scores


def _curve(score, new, default):
    known = ~new
    points = [
        {
            "threshold": float(t),
            "caught": float((score[new] > t).mean()),
            "known_unknown": float((score[known] > t).mean()),
        }
        for t in CURVE
    ]
    auroc = float(roc_auc_score(new, score)) if new.any() and known.any() else None
    at_default = {
        "caught": float((score[new] > default).mean()) if new.any() else None,
        "known_unknown": float((score[known] > default).mean()),
    }
    return {"auroc": auroc, "default": at_default, "curve": points}


def measure(task, seed=0, log=print):
    """One task's figures (module docstring)."""
    truth = task.query.obs["label"].astype(str).to_numpy()
    reference_types = set(task.reference.obs["label"].astype(str))
    new = ~np.isin(truth, list(reference_types))
    ours = _scquery(task, seed)
    peers, peer_scores = _peers(task, seed, log)

    def f1(predicted):
        return label_scores(truth[~new], np.asarray(predicted)[~new])["macro_f1"]

    row = {
        "pair": task.pair,
        "split": split_of(task),
        "held_out": list(task.held_out),
        "novel": sorted(set(truth[new]) - set(task.held_out)),
        "cells": int(len(truth)),
        "new_cells": int(new.sum()),
        "prediction_f1": f1(ours["prediction"]),
        "classifier_f1": f1(ours["classifier"]),
        "peer_f1": {name: f1(predicted) for name, predicted in peers.items()},
        "caught": float((ours["prediction"][new] == UNKNOWN).mean()) if new.any() else None,
        "known_unknown": float((ours["prediction"][~new] == UNKNOWN).mean()),
        "known_reasons": pd.Series(ours["reason"][~new & (ours["reason"] != "")]).value_counts().to_dict(),
        "new_called": pd.Series(ours["prediction"][new]).value_counts().head(3).to_dict(),
        "calibration": ours["calibration"],
        "refused_at_defaults": ours["refused"],
        "rejection": {"scquery": _curve(ours["score"], new, DEFAULTS["scquery"])},
    }
    for name, score in peer_scores.items():
        row["rejection"][name] = _curve(score, new, DEFAULTS[name])
    if "condition" in task.query.obs:
        condition = task.query.obs["condition"].astype(str).to_numpy()
        unknown = ours["prediction"] == UNKNOWN
        row["conditions"] = {
            level: float(unknown[~new & (condition == level)].mean())
            for level in sorted(set(condition[~new]))
        }
    best = max(row["peer_f1"], key=row["peer_f1"].get) if row["peer_f1"] else None
    caught = "-" if row["caught"] is None else f"{row['caught']:.1%}"
    aurocs = [f"{name} {c['auroc']:.3f}" for name, c in row["rejection"].items() if c["auroc"] is not None]
    log(
        f"{row['split']}: {task.name}: prediction {row['prediction_f1']:.3f}, head "
        f"{row['classifier_f1']:.3f}, best peer {best} {row['peer_f1'].get(best, float('nan')):.3f}; new "
        f"{row['new_cells']} cells, caught {caught}, known Unknown {row['known_unknown']:.1%}; AUROC "
        + ", ".join(aurocs)
    )
    return row


def run_unknown_pairs(*, quick, seed=0, log=print, splits=("tuning", "validation")):
    """Every task of the `splits` (tuning first); `quick` keeps the first task of each split."""
    rows = []
    for split in splits:
        done = 0
        for task in all_tasks(log=log):
            if split_of(task) != split or (quick and done):
                continue
            rows.append(measure(task, seed=seed, log=log))
            done += 1
    return {"rows": rows}
