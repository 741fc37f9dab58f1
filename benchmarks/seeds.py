"""Steadiness over seeds (issue 31): each cross-study pair with every type in the reference, trained
with several seeds, in each of `SETTINGS` (the defaults, without pretraining, with the input genes
dropped while fine-tuning, with the classifier's weights averaged, with a second classifier that
drops them). The pairs: the crossstudy part's development pairs, then those of the pair cache
(`benchmarks.pairs`; each in its split, tuning or validation; skipped with one line where the cache
is absent; the one-type MAIT pair left out, as it asks no classification). Per seed: macro-F1 over
the query cells of the reference's types (Unknown counts as wrong) of the classifier head, of the
kNN vote and of the prediction; per setting: the seeds' ensemble, their classifier probabilities
averaged (the cost of such an ensemble is one training per seed); per type, the F1 of the head (each
seed, at the defaults) and of each peer. The peers run once, in the same run: on the development
pairs those of the crossstudy part, on the cached pairs PCA + kNN and logistic regression on both
sides' log-normalized values (a cross-species query on its one-to-one orthologues,
`pairs.on_shared_genes`)."""

import time

import numpy as np

from scquery.embed import compute_embedding
from scquery.options import InputOptions
from scquery.train import train

from . import crossstudy_tasks, pairs
from .crossstudy import _peers
from .methods import scquery_config
from .metrics import label_scores, per_type_f1
from .unknown_pairs import log_normalized_peers, query_pair

SEEDS = (0, 1, 2)
#: The peers' names in the crossstudy part's words.
NAMES = {
    "PCA + kNN": "PCA + kNN (ingest's model)",
    "logistic regression": "logistic regression (CellTypist's model)",
}
#: The training settings compared (options on top of the benchmark's): the defaults, no pretraining,
#: the input genes dropped at 0.7 while fine-tuning (the rate that did best on the tuning pairs
#: among 0.2, 0.5, 0.7 and 0.8; issue 31), the classifier's weights averaged over its last 10
#: epochs (`average_epochs`), and a second classifier with the input genes dropped at 0.7, the two
#: classifiers' probabilities averaged (`ensemble_dropout`).
SETTINGS = {
    "scquery": {},
    "scquery, no pretraining": {"pretrain": False},
    "scquery, input dropout 0.7": {"dropout": 0.7},
    "scquery, weights averaged over 10 epochs": {"average_epochs": 10},
    "scquery, a second classifier with input dropout 0.7": {"ensemble_dropout": 0.7},
}


def seed_tasks(*, quick, log=print):
    """(task, split) of every pair with its whole reference (only the CellBench development pair when
    `quick`)."""
    for task in crossstudy_tasks.tasks():
        if not task.held_out and not (quick and not task.pair.startswith("CEL-seq2")):
            yield task, "tuning"
    if quick:
        return
    for task in pairs.tasks(log=log):
        if not task.held_out and task.pair not in pairs.ONE_TYPE:
            yield task, task.split


def run_seeds(*, quick, log=print):
    """Figures of every pair of `seed_tasks`."""
    rows, peers, cells = [], [], []
    for task, split in seed_tasks(quick=quick, log=log):
        log(f"{task.name} ({split}): seeds {', '.join(map(str, SEEDS))}")
        truth = task.query.obs["label"].astype(str).to_numpy()
        known = np.isin(truth, task.reference.obs["label"].astype(str).unique())
        for setting, options in SETTINGS.items():
            probabilities = []
            for seed in SEEDS:
                start = time.perf_counter()
                config = scquery_config(quick=quick, **options)
                bundle = train(task.reference, label_key="label", config=config, seed=seed)
                seconds = time.perf_counter() - start
                start = time.perf_counter()
                annotated, min_overlap, _ = query_pair(task, bundle)
                query_s = time.perf_counter() - start
                inputs = InputOptions(species=getattr(task, "query_species", None), min_overlap=min_overlap)
                probabilities.append(compute_embedding(task.query.copy(), bundle, inputs)[1])
                row = {"task": task.name, "split": split, "setting": setting, "seed": seed}
                row["train_s"], row["query_s"] = round(seconds, 2), round(query_s, 2)
                for method, column in (("head", "classifier"), ("knn", "knn"), ("prediction", "prediction")):
                    predicted = annotated.obs[f"scquery_{column}"].astype(str).to_numpy()
                    row[method] = label_scores(truth[known], predicted[known])["macro_f1"]
                    if method == "head" and setting == "scquery":
                        row["head_per_type"] = per_type_f1(truth[known], predicted[known])
                rows.append(row)
                log(
                    f"  {setting}, seed {seed}: head {row['head']:.3f}, kNN {row['knn']:.3f}, "
                    f"prediction {row['prediction']:.3f} ({seconds:.1f} s)"
                )
            averaged = np.asarray(bundle.classes)[np.mean(probabilities, axis=0).argmax(axis=1)]
            ensemble = label_scores(truth[known], averaged[known])["macro_f1"]
            rows.append(
                {"task": task.name, "split": split, "setting": setting, "seed": "ensemble", "head": ensemble}
            )
            log(f"  {setting}, the seeds' ensemble: head {ensemble:.3f}")
        for method, predicted in _task_peers(task).items():
            predicted = np.asarray(predicted).astype(str)
            scores = label_scores(truth[known], predicted[known])
            peers.append(
                {
                    "task": task.name,
                    "method": method,
                    **scores,
                    "per_type": per_type_f1(truth[known], predicted[known]),
                }
            )
        types, counts = np.unique(truth[known], return_counts=True)
        cells.append({"task": task.name, "counts": dict(zip(types.tolist(), counts.tolist(), strict=True))})
    return {"rows": rows, "peers": peers, "cells": cells, "seeds": list(SEEDS)}


def _task_peers(task):
    """The peers' predictions on `task` (see the module docstring)."""
    if not isinstance(task, pairs.PairTask):
        return _peers(task, seed=0)
    return {NAMES[name]: predicted for name, predicted in log_normalized_peers(task, seed=0).items()}
