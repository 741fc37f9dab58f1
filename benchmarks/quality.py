"""Quality: every method on the same reference/query splits; accuracy, macro-F1 and retrieval MAP."""

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

from .baselines import log_normalized, logistic_regression, pca_knn
from .methods import run_scquery, scquery_config
from .metrics import label_scores, per_type_f1, retrieval_map
from .tasks import splits

#: Python of a separate environment with celltypist==1.7.1 (CellTypist is run only when set).
CELLTYPIST_PYTHON = os.environ.get("SCQUERY_BENCH_CELLTYPIST_PYTHON")
MAP_K = 100
#: scquery's settings (training options on top of the benchmark's): the defaults, then variants in
#: parentheses, which the targets leave out: no pretraining, the input genes dropped at 0.7 while
#: fine-tuning (the rate the cross-study tuning pairs chose; issue 31), the classifier's weights
#: averaged over its last 10 epochs (`average_epochs`), a second classifier with the input genes
#: dropped at 0.7, the two classifiers' probabilities averaged (`ensemble_dropout`), and each gene
#: scaled to the reference's mean and variance (`scale`, as the logistic regression peer's input is).
SETTINGS = {
    "scquery": {},
    "scquery (no pretraining)": {"pretrain": False},
    "scquery (input dropout 0.7)": {"dropout": 0.7},
    "scquery (weights averaged over 10 epochs)": {"average_epochs": 10},
    "scquery (a second classifier with input dropout 0.7)": {"ensemble_dropout": 0.7},
    "scquery (genes scaled)": {"scale": True},
}
#: Seeds the defaults ("scquery") train with on every split, for their spread over seeds (issue 31;
#: two in a quick run); the variants and the peers train with the first.
SEEDS = 3


def _record(split, method, truth, predictions, seconds, *, embeddings=None, **extra):
    row = {
        "task": split.task,
        "fold": split.fold,
        "method": method,
        "n_reference": split.reference.n_obs,
        "n_query": split.query.n_obs,
        **label_scores(truth, predictions),
        "f1_per_type": per_type_f1(truth, predictions),
        "cells_per_type": pd.Series(truth).value_counts().to_dict(),
        "map": None,
        "seconds": round(seconds, 2),
        **extra,
    }
    if embeddings is not None:
        ref_emb, ref_labels, query_emb = embeddings
        row["map"] = retrieval_map(query_emb, truth, ref_emb, ref_labels, k=MAP_K)
    return row


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def celltypist_predictions(split, *, majority_voting=False, convert=False, probability=False):
    """CellTypist 1.7.1's predictions, run by CELLTYPIST_PYTHON (None when not configured); with
    `majority_voting` or `probability`, a table of its plain predictions, its majority-voting ones and
    each cell's highest probability; with `convert`, of its model converted to the other species
    (`Model.convert()`, human ↔ mouse) before annotating. `split` may hold `query_values` where the
    query's values differ from the reference's."""
    if not CELLTYPIST_PYTHON or not Path(CELLTYPIST_PYTHON).exists():
        return None
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        log_normalized(split.reference, split.values).write_h5ad(folder / "reference.h5ad")
        log_normalized(split.query, getattr(split, "query_values", split.values)).write_h5ad(
            folder / "query.h5ad"
        )
        runner = Path(__file__).with_name("celltypist_runner.py")
        done = subprocess.run(
            [
                CELLTYPIST_PYTHON,
                str(runner),
                str(folder / "reference.h5ad"),
                str(folder / "query.h5ad"),
                str(folder / "out.csv"),
                *(["--majority-voting"] if majority_voting else []),
                *(["--convert"] if convert else []),
                *(["--probability"] if probability else []),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"  CellTypist failed on {split.task} [{split.fold}]: {last}", flush=True)
            return None
        table = pd.read_csv(folder / "out.csv", index_col=0).loc[split.query.obs_names].astype(str)
    return table if majority_voting or probability else table.iloc[:, 0].to_numpy()


def evaluate(split, *, quick, seed=0, log=print):
    """The score rows of every method on one split."""
    truth = split.query.obs["label"].astype(str).to_numpy()
    ref_labels = split.reference.obs["label"].astype(str).to_numpy()
    rows = []
    runs = [(name, seed + offset) for name in SETTINGS for offset in range(_seeds(name, quick))]
    for name, run_seed in runs:
        config = scquery_config(quick=quick, **SETTINGS[name])
        result, seconds = _timed(run_scquery, split.reference, split.query, config=config, seed=run_seed)
        embeddings = (result["reference_embedding"], result["reference_labels"], result["query_embedding"])
        rows.append(
            _record(
                split,
                f"{name} kNN",
                truth,
                result["knn"],
                seconds,
                embeddings=embeddings,
                unknown_fraction=result["unknown_fraction"],
                seed=run_seed,
            )
        )
        rows.append(_record(split, f"{name} classifier", truth, result["classifier"], seconds, seed=run_seed))
    result, seconds = _timed(pca_knn, split.reference, split.query, values=split.values, seed=seed)
    rows.append(
        _record(
            split,
            "PCA + kNN (ingest's model)",
            truth,
            result["predictions"],
            seconds,
            embeddings=(result["reference_embedding"], ref_labels, result["query_embedding"]),
        )
    )
    result, seconds = _timed(
        logistic_regression, split.reference, split.query, values=split.values, seed=seed
    )
    rows.append(
        _record(split, "logistic regression (CellTypist's model)", truth, result["predictions"], seconds)
    )
    predictions, seconds = _timed(celltypist_predictions, split)
    if predictions is not None:
        rows.append(_record(split, "CellTypist 1.7.1", truth, predictions, seconds))
    for row in rows:
        log(
            f"  {row['task']} [{row['fold']}] {row['method']}: accuracy {row['accuracy']:.3f}, "
            f"macro-F1 {row['macro_f1']:.3f}, MAP {_fmt(row['map'])}, {row['seconds']} s"
        )
    return rows


def seed_count(quick):
    """How many seeds scquery at its defaults trains with: `SEEDS`, two when `quick`."""
    return 2 if quick else SEEDS


def _seeds(name, quick):
    """How many seeds the setting `name` trains with."""
    return seed_count(quick) if name == "scquery" else 1


def _fmt(value):
    return "–" if value is None else f"{value:.3f}"


def run_quality(*, quick, seed=0, log=print):
    """Score rows of every split of the run, and their summary per task and method."""
    rows = []
    for split in splits(quick=quick):
        log(
            f"{split.task} [{split.fold}]: {split.reference.n_obs} reference cells, "
            f"{split.query.n_obs} query cells, {split.reference.n_vars} genes"
        )
        rows.extend(evaluate(split, quick=quick, seed=seed, log=log))
    return rows, summarize(rows)


def summarize(rows):
    """Per task and method (first-seen order kept): the mean over folds and seeds; the standard
    deviation over folds (of each fold's mean over the seeds) and, where it ran with several seeds,
    the macro-F1's over seeds (of each seed's mean over the folds)."""
    table = pd.DataFrame(rows).fillna({"seed": 0})
    table["map"] = pd.to_numeric(table["map"])
    keys = ["task", "method"]
    per_fold = table.groupby([*keys, "fold"], sort=False)[["accuracy", "macro_f1", "map", "seconds"]].mean()
    grouped = per_fold.groupby(level=keys, sort=False)
    spread = grouped[["accuracy", "macro_f1"]].std(ddof=0).add_suffix("_sd")
    per_seed = table.groupby([*keys, "seed"], sort=False)["macro_f1"].mean().groupby(level=keys, sort=False)
    over_seeds = per_seed.std(ddof=1).rename("macro_f1_seeds_sd")
    counts = [grouped.size().rename("folds"), per_seed.size().rename("seeds")]
    return pd.concat([grouped.mean(), spread, over_seeds, *counts], axis=1).reset_index()
