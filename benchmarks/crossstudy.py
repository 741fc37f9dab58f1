"""Cross-study queries: macro-F1 against peers, Unknown calls for held-out types, and input scales.

Every task of `crossstudy_tasks` trains scquery on the reference and queries the other study; the
peers (PCA + kNN, logistic regression, CellTypist with and without majority voting) get the same
inputs. Per method: macro-F1 over the known types' query cells ('Unknown' counts as an error), the
share of the held-out type's cells called 'Unknown' and the share of known cells called 'Unknown';
scquery's on every seed as well (its spread over seeds, issue 31), the peers' once.
Each pair's query is also given as subsets of its types (e.g. only the T cells, as from a sorted
sample): their cells are the same, so what they are called should not change, and none should turn
'Unknown' for lack of the other types. On the first Baron task the same query is also given in six
other scales (counts, log1p CP10k, linear CP10k, TPM-like, log2(CPM+1), z-scored): the predictions
must agree with the counts' ones, or the input be refused.
"""

import time

import numpy as np
import scipy.sparse as sp

from scquery.errors import ScqueryError
from scquery.query import UNKNOWN, query
from scquery.train import train

from .baselines import logistic_regression, pca_knn
from .crossstudy_tasks import tasks
from .methods import scquery_config
from .metrics import label_scores
from .quality import celltypist_predictions, seed_count

#: scquery's answers, scored on every seed (`seeds` of each of their rows: issue 31's spread).
SCQUERY_COLUMNS = {
    "scquery prediction": "scquery_prediction",
    "scquery kNN vote": "scquery_knn",
    "scquery classifier": "scquery_classifier",
}


def _scores(truth, predicted, held):
    known = ~held
    scores = label_scores(truth[known], predicted[known])
    return {
        "macro_f1": scores["macro_f1"],
        "accuracy": scores["accuracy"],
        "held_out_unknown": float((predicted[held] == UNKNOWN).mean()) if held.any() else None,
        "known_unknown": float((predicted[known] == UNKNOWN).mean()),
    }


def _peers(task, seed):
    """Each peer's predictions (CellTypist's only where its environment is configured)."""
    values = task.reference_values
    out = {
        "PCA + kNN (ingest's model)": pca_knn(task.reference, task.query, values=values, seed=seed)[
            "predictions"
        ],
        "logistic regression (CellTypist's model)": logistic_regression(
            task.reference, task.query, values=values, seed=seed
        )["predictions"],
    }
    table = celltypist_predictions(_Split(task), majority_voting=True)
    if table is not None:
        out["CellTypist 1.7.1"] = table["predicted_labels"].to_numpy()
        out["CellTypist 1.7.1, majority voting"] = table["majority_voting"].to_numpy()
    return out


class _Split:
    """What `quality.celltypist_predictions` reads of a split."""

    def __init__(self, task):
        self.reference, self.query, self.values = task.reference, task.query, task.reference_values
        self.task, self.fold = task.name, "-"


def scale_variants(counts):
    """The same counts matrix in the scales a user may have it in (`None`: refused expected)."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    totals[totals == 0] = 1

    def per_cell(total, matrix=counts):
        sums = np.asarray(matrix.sum(axis=1)).ravel()
        sums[sums == 0] = 1
        return sp.csr_matrix(sp.diags(total / sums) @ matrix)

    def logged(matrix, function):
        matrix = matrix.copy()
        matrix.data = function(matrix.data)
        return matrix

    lengths = np.random.default_rng(0).uniform(0.5, 5.0, counts.shape[1])  # kb, seeded
    cp10k_log = logged(per_cell(1e4), np.log1p).toarray()
    std = cp10k_log.std(axis=0)
    std[std == 0] = 1
    variants = {
        "counts": counts,
        "log1p CP10k": logged(per_cell(1e4), np.log1p),
        "linear CP10k": per_cell(1e4),
        "TPM-like (counts / gene length, per million)": per_cell(
            1e6, sp.csr_matrix(counts @ sp.diags(1 / lengths))
        ),
        "log2(CPM+1)": logged(per_cell(1e6), lambda x: np.log2(1 + x)),
        "z-scored log1p CP10k": (cp10k_log - cp10k_log.mean(axis=0)) / std,
    }
    return {name: sp.csr_matrix(matrix, dtype=np.float32) for name, matrix in variants.items()}


def _scales(task, bundle, log):
    """The query in every scale of `scale_variants`: agreement with the counts' predictions."""
    rows, reference = [], None
    truth = task.query.obs["label"].astype(str).to_numpy()
    held = np.isin(truth, task.held_out)
    for name, X in scale_variants(task.query.X).items():
        adata = task.query.copy()
        adata.X = X
        try:
            query(adata, bundle)
        except ScqueryError as error:
            rows.append({"scale": name, "refused": str(error)})
            log(f"  scale {name}: refused ({error})")
            continue
        predicted = adata.obs["scquery_prediction"].astype(str).to_numpy()
        reference = predicted if reference is None else reference
        found = adata.uns["scquery"]["values"]
        row = {
            "scale": name,
            "detected": found,
            "agreement_with_counts": float((predicted == reference).mean()),
            **_scores(truth, predicted, held),
        }
        rows.append(row)
        log(f"  scale {name}: detected {found}, agreement {row['agreement_with_counts']:.3f}")
    return rows


#: Per pair, subsets of the query's types queried on their own.
SUBSETS = {
    "pbmc3k→pbmc68k": [["CD8 T", "Memory CD4 T", "Naive CD4 T"], ["CD14+ Mono", "DC"], ["B"]],
    "baron (donor human3 out)": [
        ["alpha", "beta", "delta", "gamma"],
        ["alpha", "beta"],
        ["acinar", "ductal"],
    ],
    "CEL-seq2→Drop-seq": [["H1975", "HCC827"], ["HCC827"]],
}


def _subsets(task, bundle, whole, log):
    """The query's `SUBSETS` queried alone: share Unknown and accuracy, next to the same cells'
    figures when the whole query was given (`whole`: its predictions)."""
    rows = []
    truth = task.query.obs["label"].astype(str).to_numpy()
    for types in SUBSETS.get(task.pair, []):
        cells = np.isin(truth, types)
        adata = task.query[cells].copy()
        query(adata, bundle)
        predicted = adata.obs["scquery_prediction"].astype(str).to_numpy()
        row = {
            "task": task.name,
            "types": types,
            "cells": int(cells.sum()),
            "unknown": float((predicted == UNKNOWN).mean()),
            "accuracy": float((predicted == truth[cells]).mean()),
            "unknown_in_whole": float((whole[cells] == UNKNOWN).mean()),
            "accuracy_in_whole": float((whole[cells] == truth[cells]).mean()),
        }
        rows.append(row)
        log(
            f"  subset {' + '.join(types)}: {row['cells']} cells, Unknown {row['unknown']:.3f} "
            f"(in the whole query {row['unknown_in_whole']:.3f}), accuracy {row['accuracy']:.3f} "
            f"({row['accuracy_in_whole']:.3f})"
        )
    return rows


def _scquery_run(task, *, quick, seed):
    """scquery trained on `task`'s reference with `seed`: the bundle, the annotated query and the
    seconds both took."""
    start = time.perf_counter()
    bundle = train(task.reference, label_key="label", config=scquery_config(quick=quick), seed=seed)
    annotated = task.query.copy()
    query(annotated, bundle)
    return bundle, annotated, time.perf_counter() - start


def run_crossstudy(*, quick, seed=0, log=print):
    """Figures of every task (the CellBench pair only, with a small network, when `quick`). The
    table's figures are `seed`'s; scquery's rows also hold each seed's (`seeds`: `seed` and the next
    ones, `quality.seed_count(quick)` in all)."""
    results, scales, subsets = [], [], []
    n_seeds = seed_count(quick)
    for task in tasks():
        if quick and not task.pair.startswith("CEL-seq2"):
            continue
        log(f"{task.name}: {task.reference.n_obs} reference cells, {task.query.n_obs} query cells")
        bundle, annotated, seconds = _scquery_run(task, quick=quick, seed=seed)
        obs = annotated.obs
        truth = obs["label"].astype(str).to_numpy()
        held = np.isin(truth, task.held_out)
        methods = {name: obs[column].astype(str).to_numpy() for name, column in SCQUERY_COLUMNS.items()}
        per_seed = {name: [_scores(truth, predicted, held)] for name, predicted in methods.items()}
        for other in range(seed + 1, seed + n_seeds):
            other_obs = _scquery_run(task, quick=quick, seed=other)[1].obs
            for name, column in SCQUERY_COLUMNS.items():
                per_seed[name].append(_scores(truth, other_obs[column].astype(str).to_numpy(), held))
        methods.update(_peers(task, seed))
        for method, predicted in methods.items():
            row = {"task": task.name, "pair": task.pair, "held_out": task.held_out, "method": method}
            row.update(_scores(truth, predicted, held))
            if method in per_seed:
                row["seeds"] = per_seed[method]
            if method == "scquery prediction":
                row["seconds"] = round(seconds, 1)
                row["unknown_by_reason"] = annotated.uns["scquery"]["query_params"]["n_unknown_by_reason"]
            results.append(row)
            log(
                f"  {method}: macro-F1 {row['macro_f1']:.3f}, known Unknown {row['known_unknown']:.3f}"
                + (f", held-out Unknown {row['held_out_unknown']:.3f}" if held.any() else "")
            )
        if not task.held_out:
            subsets += _subsets(task, bundle, methods["scquery prediction"], log)
        if not task.held_out and (task.pair.startswith("baron") or quick):
            scales = _scales(task, bundle, log)
    return {"tasks": results, "scales": scales, "subsets": subsets}
