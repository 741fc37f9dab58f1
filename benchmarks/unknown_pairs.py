"""Unknown calls on the tuning and the validation pairs (`pairs.TUNING`, `pairs.VALIDATION`), with the
peers' own rejection beside them: the `pairs` entry of the `unknown` part (`--only unknown`).

Every pair (the shared ones of `crossstudy_tasks` and the cached ones of `pairs`) is run whole and with
each type of `pairs.HELD_OUT` removed from its reference in turn (one model each). A query cell is
*new* when its type is not among the reference's (the held-out type, and the query types the
reference never had), *known* otherwise. Per task and method:

- the whole trade-off: the share of new cells called Unknown (caught) against the share of known cells
  called Unknown, as the method's rejection score moves, its AUROC (new against known cells), and the
  point of the method's default;
- macro-F1 over the known cells ('Unknown' counts as an error) of scquery's prediction, of its
  classifier head and of each peer;
- of the known cells called Unknown, the share the classifier head labels right (the calls that cost
  an answer; the others reject a wrong one);
- where the query has a condition (`obs['condition']`), the Unknown share of its known cells in each;
- each Unknown rule's threshold moved alone over `SWEEP` (`threshold_sweep`), replayed on the scores
  of the same query, so that the report shows what the tuning set would choose and what that choice
  gives on the validation set;
- scquery's figures (macro-F1 of the prediction and the head, caught, known Unknown, AUROC) on every
  seed (`seeds`: `seed` and the next ones, `quality.seed_count(quick)` in all; one model each), for
  their spread (issue 31); the rest is the first seed's.

scquery's score is its Unknown score, `obs['scquery_unknown_score']` (`scquery.rules.unknown_score`:
how far past its threshold the cell's furthest score lies, 0.5 at the threshold). Its curve is
therefore the trade-off as `--max-unknown-score` moves, every rule stricter or looser at once; its
default point is the cut-off 0.5, scquery's Unknown calls exactly.

The peers' rejection: CellTypist's highest probability (score 1 - it; its `p_thres`, default 0.5;
only where `SCQUERY_BENCH_CELLTYPIST_PYTHON` is set), and scmap-cluster's cosine similarity to the
nearest type centroid over the reference's highly variable genes (score 1 - it; default 0.7). Peers get
both sides on one gene space (`pairs.on_shared_genes`). A query scquery refuses for too few of the
model's genes is run again with `min_overlap=LOW_OVERLAP`, and the refusal recorded.

Pairs whose files are absent are skipped with one line (`pairs.tasks`), so the part runs without the
cache. `quick`: the first task of each split that has new cells (else its first task), trained with
the benchmark's small network.
"""

import dataclasses

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from scquery.errors import TooFewGenes
from scquery.options import InputOptions
from scquery.query import UNKNOWN, query
from scquery.rules import SIGNALS, QueryOptions, thresholds, unknown_reasons
from scquery.train import train

from . import crossstudy_tasks, pairs
from .baselines import log_normalized, logistic_regression, pca_knn, reference_hvgs
from .methods import scquery_config
from .metrics import label_scores
from .quality import celltypist_predictions, seed_count

#: Each method's rejection threshold at its default, on its score (higher: more likely new).
DEFAULTS = {"scquery": QueryOptions().max_unknown_score, "CellTypist": 1 - 0.5, "scmap-cosine": 1 - 0.7}
#: The methods whose rejection is reported, in the report's order.
METHODS = ("scquery", "CellTypist", "scmap-cosine")
#: The least gene overlap a query refused at the default (0.5) is run again with.
LOW_OVERLAP = 0.2
#: The thresholds a curve is drawn at (on each method's score).
CURVE = np.round(np.linspace(0, 1, 21), 2)
SPLITS = ("tuning", "validation")
#: The values each rule's threshold is replayed at (`threshold_sweep`), by option: a share's those of
#: `CURVE`, the novelty's (a log ratio) from 0.25 to 3.
SWEEP = {
    signal.option: CURVE if signal.rejects == "below" else np.round(np.arange(0.25, 3.01, 0.25), 2)
    for signal in SIGNALS
    if signal.option
}


def all_tasks(*, splits=SPLITS, cache=None, log=print):
    """The shared pairs' tasks (where any is in `splits`), then the cached pairs' (each pair whole,
    then each held-out type)."""
    if any(pairs.split_of(name) in splits for name in crossstudy_tasks.HELD_OUT):
        yield from crossstudy_tasks.tasks()
    yield from pairs.tasks(cache=cache, log=log)


def split_of(task):
    return getattr(task, "split", None) or pairs.split_of(task.pair)


def new_cells(task):
    """Per query cell: is its type absent from the reference?"""
    truth = task.query.obs["label"].astype(str).to_numpy()
    return ~np.isin(truth, task.reference.obs["label"].astype(str).unique())


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


def _scquery(task, seed, quick):
    bundle = train(task.reference, label_key="label", config=scquery_config(quick=quick), seed=seed)
    adata, _, refused = query_pair(task, bundle)
    obs = adata.obs
    return {
        "obs": obs,
        "prediction": obs["scquery_prediction"].astype(str).to_numpy(),
        "classifier": obs["scquery_classifier"].astype(str).to_numpy(),
        "score": obs["scquery_unknown_score"].to_numpy(np.float64),
        "reason": obs["scquery_unknown_reason"].astype(str).to_numpy(),
        "refused": refused,
    }


def query_pair(task, bundle):
    """`task`'s query annotated by `bundle`, the `min_overlap` it was read with and why it was
    refused at the default (None): a query of too few of the model's genes is run again with
    `min_overlap=LOW_OVERLAP`, what a user would do."""
    species = getattr(task, "query_species", None)
    adata = task.query.copy()
    try:
        query(adata, bundle, species=species, matches=False)
        return adata, InputOptions.min_overlap, None
    except TooFewGenes as error:
        adata = task.query.copy()
        query(adata, bundle, species=species, matches=False, min_overlap=LOW_OVERLAP)
        return adata, LOW_OVERLAP, f"{error} (run again with min_overlap={LOW_OVERLAP})"


def log_normalized_peers(task, seed):
    """PCA + kNN's and logistic regression's predictions on both sides' log-normalized values, on the
    genes they share (`pairs.on_shared_genes`: a cross-species query on its one-to-one orthologues)."""
    return {name: predict() for name, predict in peer_runs(task, seed).items()}


def peer_runs(task, seed):
    """`log_normalized_peers` as one call per peer, each returning its predictions (to time each)."""
    reference, query_data = pairs.on_shared_genes(task)
    ref_log = log_normalized(reference, task.reference_values)
    query_log = log_normalized(query_data, task.query_values)
    return {
        "PCA + kNN": lambda: pca_knn(ref_log, query_log, values="log1p", seed=seed)["predictions"],
        "logistic regression": lambda: logistic_regression(ref_log, query_log, values="log1p", seed=seed)[
            "predictions"
        ],
    }


def shared_gene_celltypist(task, **options):
    """CellTypist's `celltypist_predictions` (its `options`) on both sides of `task`, on the genes they
    share (`pairs.on_shared_genes`); None where CellTypist is not configured."""
    reference, query_data = pairs.on_shared_genes(task)
    return celltypist_predictions(_Split(reference, query_data, task), **options)


def _peers(task, seed, log):
    reference, query_data = pairs.on_shared_genes(task)
    values = {"reference_values": task.reference_values, "query_values": task.query_values}
    out, scores = log_normalized_peers(task, seed), {}
    nearest, similarity = scmap_cosine(reference, query_data, **values)
    out["scmap-cosine"], scores["scmap-cosine"] = nearest, 1 - similarity
    table = shared_gene_celltypist(task, probability=True)
    if table is None:
        log("  CellTypist not run (SCQUERY_BENCH_CELLTYPIST_PYTHON unset, or it failed): left out")
    else:
        out["CellTypist"] = table["predicted_labels"].to_numpy()
        scores["CellTypist"] = 1 - table["probability"].to_numpy(np.float64)
    return out, scores


def _auroc(score, new):
    """The AUROC of the score, new against known cells (None without both)."""
    return float(roc_auc_score(new, score)) if new.any() and (~new).any() else None


def _curve(score, new, default):
    """The share of new cells caught and of known cells called Unknown (score above the threshold) at
    each threshold of `CURVE` and at `default`; the AUROC of new against known cells (None without
    both)."""
    known = ~new
    points = [
        {
            "threshold": float(t),
            "caught": float((score[new] > t).mean()) if new.any() else None,
            "known_unknown": float((score[known] > t).mean()) if known.any() else None,
        }
        for t in CURVE
    ]
    auroc = _auroc(score, new)
    at_default = {
        "caught": float((score[new] > default).mean()) if new.any() else None,
        "known_unknown": float((score[known] > default).mean()) if known.any() else None,
    }
    return {"auroc": auroc, "default": at_default, "curve": points}


def threshold_sweep(obs, new, *, key="scquery"):
    """Each rule's threshold moved alone, the others at their defaults, replayed on the scores a
    query wrote in `obs` (`scquery.rules.unknown_reasons`; the same model, no new query): per option
    of `SWEEP`, the share of the `new` cells caught and of the known ones called Unknown at each value.
    The signal without a column (no reference genes) is read from its reason, which comes first, so
    no other reason hides it."""
    reason = obs[f"{key}_unknown_reason"].astype(str).to_numpy()
    scores = [obs[f"{key}_{s.column}"].to_numpy() if s.column else reason != s.reason for s in SIGNALS]
    sweep = {}
    for option, values in SWEEP.items():
        sweep[option] = []
        for value in values:
            chosen = dataclasses.replace(QueryOptions(), **{option: float(value)})
            cut_off = chosen.max_unknown_score
            called = unknown_reasons(*scores, max_unknown_score=cut_off, **thresholds(chosen)) > 0
            sweep[option].append(
                {
                    "value": float(value),
                    "caught": float(called[new].mean()) if new.any() else None,
                    "known_unknown": float(called[~new].mean()) if (~new).any() else None,
                }
            )
    return sweep


def measure(task, *, seed=0, quick=False, log=print):
    """One task's figures (module docstring)."""
    truth = task.query.obs["label"].astype(str).to_numpy()
    new = new_cells(task)
    ours = _scquery(task, seed, quick)
    peers, peer_scores = _peers(task, seed, log)

    def f1(predicted):
        return label_scores(truth[~new], np.asarray(predicted)[~new])["macro_f1"] if (~new).any() else None

    def scores(run):
        unknown = run["prediction"] == UNKNOWN
        return {
            "prediction_f1": f1(run["prediction"]),
            "classifier_f1": f1(run["classifier"]),
            "caught": float(unknown[new].mean()) if new.any() else None,
            "known_unknown": float(unknown[~new].mean()) if (~new).any() else None,
            "auroc": _auroc(run["score"], new),
        }

    n_seeds = seed_count(quick)
    seeds = [scores(ours)] + [
        scores(_scquery(task, other, quick)) for other in range(seed + 1, seed + n_seeds)
    ]
    unknown = ours["prediction"] == UNKNOWN
    row = {
        "pair": task.pair,
        "split": split_of(task),
        "held_out": list(task.held_out),
        "novel": sorted(set(truth[new]) - set(task.held_out)),
        "cells": int(len(truth)),
        "new_cells": int(new.sum()),
        **{key: seeds[0][key] for key in ("prediction_f1", "classifier_f1", "caught", "known_unknown")},
        "peer_f1": {name: f1(predicted) for name, predicted in peers.items()},
        "known_unknown_head_right": (
            float((unknown & (ours["classifier"] == truth))[~new].mean()) if (~new).any() else None
        ),
        "known_reasons": pd.Series(ours["reason"][~new & (ours["reason"] != "")]).value_counts().to_dict(),
        "new_called": pd.Series(ours["prediction"][new]).value_counts().head(3).to_dict(),
        "refused_at_defaults": ours["refused"],
        "rejection": {"scquery": _curve(ours["score"], new, DEFAULTS["scquery"])},
        "thresholds": threshold_sweep(ours["obs"], new),
        "seeds": seeds,
    }
    for name, score in peer_scores.items():
        row["rejection"][name] = _curve(score, new, DEFAULTS[name])
    at_default = row["rejection"]["scquery"]["default"]
    if (at_default["caught"], at_default["known_unknown"]) != (row["caught"], row["known_unknown"]):
        log(
            f"  note: the score's default point {at_default} is not the Unknown calls' ({row['caught']}, "
            f"{row['known_unknown']})"
        )
    if "condition" in task.query.obs:
        condition = task.query.obs["condition"].astype(str).to_numpy()
        row["conditions"] = {
            level: float(unknown[~new & (condition == level)].mean())
            for level in sorted(set(condition[~new]))
        }
    log(summary_line(row, task.name))
    return row


def best_peer(row):
    """(name, macro-F1) of the row's best peer, or (None, None)."""
    found = {name: f1 for name, f1 in row["peer_f1"].items() if f1 is not None}
    if not found:
        return None, None
    name = max(found, key=found.get)
    return name, found[name]


def summary_line(row, name):
    best, best_f1 = best_peer(row)
    caught = "-" if row["caught"] is None else f"{row['caught']:.1%}"
    known = "-" if row["known_unknown"] is None else f"{row['known_unknown']:.1%}"
    aurocs = [f"{m} {c['auroc']:.3f}" for m, c in row["rejection"].items() if c["auroc"] is not None]
    f1 = {k: "-" if row[k] is None else f"{row[k]:.3f}" for k in ("prediction_f1", "classifier_f1")}
    return (
        f"{row['split']}: {name}: prediction {f1['prediction_f1']}, head {f1['classifier_f1']}, best peer "
        f"{best} {'-' if best_f1 is None else f'{best_f1:.3f}'}; new {row['new_cells']} cells, caught "
        f"{caught}, known Unknown {known}; AUROC " + (", ".join(aurocs) or "-")
    )


def run_unknown_pairs(*, quick, seed=0, log=print, splits=SPLITS, cache=None):
    """Every task of the `splits`, split by split (tuning first): `{'rows': [...]}`, one row per task
    (`measure`). `quick`: one task per split (module docstring)."""
    chosen = {split: [] for split in splits}
    for task in all_tasks(splits=splits, cache=cache, log=log):
        split = split_of(task)
        if split not in chosen:
            continue
        if quick and chosen[split]:  # keep the first task with new cells, else the first task
            if new_cells(chosen[split][0]).any() or not new_cells(task).any():
                continue
            chosen[split] = []
        chosen[split].append(task)
    rows = []
    for split, found in chosen.items():
        if not found:
            log(f"pairs: no {split} task has its data here")
        rows += [measure(task, seed=seed, quick=quick, log=log) for task in found]
    return {"rows": rows}
