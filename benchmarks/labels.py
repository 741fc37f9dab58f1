"""Label efficiency: how well each method learns from few labels, and whether unlabelled cells help.

For each task of the quality part (fewer folds), a stratified fraction of the reference's labels is
kept (at least 2 cells per type, seeded); the other reference cells stay, unlabelled. Compared on
the same query:

* scquery pretrained on all reference cells (labelled and unlabelled), fine-tuned on the labelled;
* scquery pretrained on the labelled cells only (a reference of those cells alone: what a user
  without unlabelled data gets);
* scquery without pretraining (given all cells, so genes are chosen on all of them as above);
* the peers, trained on the labelled cells: PCA + kNN, logistic regression, CellTypist; and PCA of
  all reference cells + kNN on the labelled ones (the simplest use of the unlabelled cells).

The cross-study variant takes its unlabelled cells from the query's study: pbmc3k's few labelled
cells (and nothing else of pbmc3k) plus pbmc68k_reduced's cells, unlabelled, pretrain; pbmc68k is
queried. scquery's score is its classifier head's prediction (the kNN transfer against so few
reference cells is recorded too, in results.json).
"""

import dataclasses
import time

import numpy as np
import pandas as pd

from .baselines import logistic_regression, pca_knn
from .methods import run_scquery
from .metrics import label_scores
from .quality import celltypist_predictions
from .tasks import baron_splits, data_dir, pbmc_split, synthetic_split, zeisel_splits

FRACTIONS = (0.01, 0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)
QUICK_FRACTIONS, QUICK_SEEDS = (0.05, 1.0), (0,)
#: Folds of the quality part's tasks run here (the quality part runs them all).
BARON_DONORS, ZEISEL_FOLDS = ("human1", "human3"), ("0",)
MIN_PER_TYPE = 2

ALL, LABELLED, NONE, QUERY = (
    "scquery, pretrained on all cells",
    "scquery, pretrained on labelled cells",
    "scquery, no pretraining",
    "scquery, pretrained on labelled + query cells",
)
PCA_ALL = "PCA of all cells + kNN"
PEERS = ("PCA + kNN", "logistic regression", "CellTypist 1.7.1")


def keep_labels(labels, fraction, seed):
    """Boolean mask of the cells whose label is kept: `fraction` of each type (rounded), at least
    `MIN_PER_TYPE` (or all of a smaller type), drawn with `numpy.random.default_rng(seed)`."""
    labels = np.asarray(labels, dtype=str)
    keep = np.zeros(labels.size, dtype=bool)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        cells = np.flatnonzero(labels == label)
        n = min(cells.size, max(MIN_PER_TYPE, int(round(fraction * cells.size))))
        keep[rng.choice(cells, size=n, replace=False)] = True
    return keep


def settings(quick):
    """The run's fractions, seeds and folds, as the report states them."""
    if quick:
        return {"fractions": list(QUICK_FRACTIONS), "seeds": list(QUICK_SEEDS), "folds": "synthetic data"}
    return {
        "fractions": list(FRACTIONS),
        "seeds": list(SEEDS),
        "folds": f"Baron donors {', '.join(BARON_DONORS)} held out; Zeisel fold(s) {', '.join(ZEISEL_FOLDS)}",
    }


def _unlabelled(reference, keep):
    """A copy of `reference` whose cells outside `keep` have no label."""
    partial = reference.copy()
    labels = partial.obs["label"].astype(object)
    labels[~keep] = np.nan
    partial.obs["label"] = labels
    return partial


def _tasks(quick):
    """(task, family, split): the family names splits with the same reference cells (their
    all-cell pretraining is shared, e.g. Zeisel's two label levels)."""
    folder = data_dir()
    if quick or folder is None:
        yield "synthetic", "synthetic", synthetic_split(*((1000, 500) if quick else ()))
        return
    yield "pbmc3k→pbmc68k", "pbmc", pbmc_split(folder)
    for split in baron_splits(folder):
        if split.fold in BARON_DONORS:
            yield split.task, f"baron {split.fold}", split
    for level in ("level1class", "level2class"):
        for split in zeisel_splits(folder, level):
            if split.fold in ZEISEL_FOLDS:
                yield split.task, f"zeisel {split.fold}", split


def run_labels(*, quick, log=print, fractions=None, seeds=None, options=None, peers=True, tasks=None):
    """Score rows of every task, label fraction, seed and method, and their summary.

    `options` (training options on top of the benchmark's), `peers=False` and `tasks` (names of
    the tasks to run) serve experiments.
    """
    from scquery.train import pretrain

    from .methods import scquery_config

    fractions = fractions or (QUICK_FRACTIONS if quick else FRACTIONS)
    seeds = seeds or (QUICK_SEEDS if quick else SEEDS)
    config = scquery_config(quick=quick, **(options or {}))
    rows, encoders = [], {}
    for task, family, split in _tasks(quick):
        if tasks is not None and task not in tasks:
            continue
        log(
            f"{task} [{split.fold}]: {split.reference.n_obs} reference cells, {split.query.n_obs} query cells"
        )
        for seed in seeds:
            if (family, seed) not in encoders:
                start = time.perf_counter()
                encoders[family, seed] = pretrain(split.reference, config=config, seed=seed)
                log(f"  pretrained on all {split.reference.n_obs} cells: {time.perf_counter() - start:.1f} s")
            for fraction in fractions:
                run = _Run(task, split, fraction, seed, config, log)
                run.all_cells(encoders[family, seed])
                run.labelled_only()
                run.no_pretraining()
                if peers:
                    run.peers()
                if task.startswith("pbmc3k"):
                    run.with_query_cells()
                rows.extend(run.rows)
    return rows, summarize(rows)


class _Run:
    """Every method on one task, label fraction and seed; the score rows in `rows`."""

    def __init__(self, task, split, fraction, seed, config, log):
        self.task, self.split, self.fraction, self.seed = task, split, fraction, seed
        self.config, self.log = config, log
        self.keep = keep_labels(split.reference.obs["label"], fraction, seed)
        self.labelled = split.reference[self.keep].copy()
        self.truth = split.query.obs["label"].astype(str).to_numpy()
        self.rows = []

    def record(self, method, predictions, seconds, *, task=None, **extra):
        row = {
            "task": task or self.task,
            "fold": self.split.fold,
            "fraction": self.fraction,
            "seed": self.seed,
            "method": method,
            "n_labelled": int(self.keep.sum()),
            **label_scores(self.truth, predictions),
            "seconds": round(seconds, 2),
            **extra,
        }
        self.rows.append(row)
        self.log(
            f"  {row['task']} [{row['fold']}] {self.fraction:.0%} seed {self.seed} {method}: "
            f"macro-F1 {row['macro_f1']:.3f}, accuracy {row['accuracy']:.3f}, {seconds:.1f} s"
        )

    def scquery(self, method, reference, *, task=None, config=None, **train_options):
        start = time.perf_counter()
        result = run_scquery(
            reference, self.split.query, config=config or self.config, seed=self.seed, **train_options
        )
        knn = label_scores(self.truth, result["knn"])["macro_f1"]
        self.record(method, result["classifier"], time.perf_counter() - start, task=task, knn_macro_f1=knn)

    def all_cells(self, encoder):
        """Pretrained on every reference cell (the encoder, shared by all fractions), fine-tuned on
        the labelled ones; the others are in the reference, unlabelled."""
        self.scquery(ALL, _unlabelled(self.split.reference, self.keep), encoder=encoder)

    def labelled_only(self):
        if self.fraction < 1:
            self.scquery(LABELLED, self.labelled)
        else:  # every cell is labelled: the same model as ALL
            self.rows.append({**self.rows[-1], "method": LABELLED})

    def no_pretraining(self):
        config = dataclasses.replace(self.config, pretrain=False)
        self.scquery(NONE, _unlabelled(self.split.reference, self.keep), config=config)

    def with_query_cells(self):
        """The cross-study variant: the labelled cells and the query's cells, unlabelled, pretrain.
        It shares the labelled-only, no-pretraining and peer rows (same labelled cells, same query)."""
        task = f"{self.task}, query cells unlabelled"
        shared = [{**row, "task": task} for row in self.rows if row["method"] in (LABELLED, NONE, *PEERS)]
        self.scquery(QUERY, self.labelled, task=task, unlabeled=self.split.query)
        self.rows.extend(shared)

    def peers(self):
        split, labelled, seed = self.split, self.labelled, self.seed
        labelled_split = dataclasses.replace(split, reference=labelled)
        for name, predict in (
            (
                "PCA + kNN",
                lambda: pca_knn(labelled, split.query, values=split.values, seed=seed)["predictions"],
            ),
            (
                "logistic regression",
                lambda: logistic_regression(labelled, split.query, values=split.values, seed=seed)[
                    "predictions"
                ],
            ),
            ("CellTypist 1.7.1", lambda: celltypist_predictions(labelled_split)),
            (
                PCA_ALL,
                lambda: pca_all_knn(split.reference, labelled, split.query, values=split.values, seed=seed),
            ),
        ):
            start = time.perf_counter()
            predictions = predict()
            if predictions is not None:
                self.record(name, predictions, time.perf_counter() - start)


def pca_all_knn(reference, labelled, query, *, values, seed=0):
    """PCA of all reference cells' HVGs (labelled or not), then the 15-NN vote of the labelled."""
    unlabelled = reference[~reference.obs_names.isin(labelled.obs_names)]
    return pca_knn(labelled, query, values=values, seed=seed, unlabelled=unlabelled)["predictions"]


def summarize(rows):
    """Mean and sd over seeds and folds of macro-F1 (and accuracy), per task, fraction and method."""
    table = pd.DataFrame(rows)
    grouped = table.groupby(["task", "fraction", "method"], sort=False)
    summary = grouped[["macro_f1", "accuracy", "seconds", "n_labelled"]].mean()
    spread = grouped[["macro_f1", "accuracy"]].std(ddof=0).add_suffix("_sd")
    counts = grouped.size().rename("runs")
    return pd.concat([summary, spread, counts], axis=1).reset_index()
