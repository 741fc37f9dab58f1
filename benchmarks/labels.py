"""Label efficiency: what users read (the prediction) when a reference has few labels, and whether
its unlabelled cells and the query study's help.

The pairs: the cross-study development pairs (pbmc3k → pbmc68k, Baron with donor human3 out,
CellBench CEL-seq2 → Drop-seq), then the whole pairs of the pair cache (`benchmarks.pairs`, each in
its split, tuning or validation; the one-type MAIT pair left out, as it asks no classification; a
pair skipped with one line where the cache is absent or scquery refuses its query). In each, a
stratified fraction of the reference's labels is kept (at least 2 cells per type, seeded); the other
reference cells stay, unlabelled. Compared on the same query:

* scquery pretrained on every reference cell and the query study's cells (given as unlabelled
  data), fine-tuned on the labelled cells; its unlabelled reference cells labelled by the model
  (`scquery.propagate`) — the method;
* the same model without that propagation (the reference points are the labelled cells only: what
  scquery did before);
* scquery pretrained on the reference's cells alone (the query study not given), with propagation;
* scquery without pretraining (with propagation);
* the peers, trained on the labelled cells: PCA + kNN, logistic regression, CellTypist (on both
  sides' log-normalized values, a cross-species query on its one-to-one orthologues:
  `pairs.on_shared_genes`).

scquery's score is its prediction (`query()`'s `scquery_prediction`: kNN vote + classifier +
Unknown rules), with 'Unknown' counted as wrong; its classifier head's score and the share of
known query cells called Unknown are recorded beside it. Every score is over the query cells of the
reference's types (a cached pair's query may hold others). A query study whose cells share too few
of the model's genes to pretrain on (scquery refuses them) is given again with
`unlabeled_min_overlap` and the query's `min_overlap` at `unknown_pairs.LOW_OVERLAP`, what a user
would do (`pretrain_on_query`; the report lists the tasks so read). Each task runs in a process of
its own (`each_task`).
"""

import contextlib
import dataclasses
import functools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from scquery.errors import ScqueryError, TooFewGenes
from scquery.options import InputOptions

from . import crossstudy_tasks, pairs
from .methods import run_scquery
from .metrics import label_scores
from .tasks import data_dir, synthetic_split
from .unknown_pairs import LOW_OVERLAP, peer_runs, shared_gene_celltypist

FRACTIONS = (0.01, 0.05, 1.0)
SEEDS = (0, 1, 2)
QUICK_FRACTIONS, QUICK_SEEDS = (0.05, 1.0), (0,)
MIN_PER_TYPE = 2

QUERY, NO_PROPAGATION, REFERENCE_ALONE, NONE = (
    "scquery, pretrained on reference + query cells",
    "scquery, same, no propagated labels",
    "scquery, pretrained on the reference's cells alone",
    "scquery, no pretraining",
)
#: The methods pretrained before fine-tuning (with propagated labels), each judged on the targets.
PRETRAINED = (QUERY, REFERENCE_ALONE)
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
    """The run's fractions, seeds and tasks, as the report states them."""
    if quick:
        return {"fractions": list(QUICK_FRACTIONS), "seeds": list(QUICK_SEEDS), "folds": "synthetic data"}
    return {
        "fractions": list(FRACTIONS),
        "seeds": list(SEEDS),
        "folds": "the cross-study development pairs (Baron: donor human3 out) and the whole pairs of the "
        "pair cache (benchmarks/PAIRS.md), each in its split",
    }


def _unlabelled(reference, keep):
    """A copy of `reference` whose cells outside `keep` have no label."""
    partial = reference.copy()
    labels = partial.obs["label"].astype(object)
    labels[~keep] = np.nan
    partial.obs["label"] = labels
    return partial


def _tasks(quick, *, log=print):
    """(task, split) of every pair (module docstring), as `crossstudy_tasks.Task`s; synthetic data
    when `quick` or without the shared data."""
    folder = data_dir()
    if quick or folder is None:
        split = synthetic_split(*((1000, 500) if quick else ()))
        yield (
            crossstudy_tasks.Task(split.task, split.reference, split.query, split.values, split.values),
            "tuning",
        )
        return
    for pair in (crossstudy_tasks.pbmc_pair, crossstudy_tasks.baron_pair, crossstudy_tasks.cellbench_pair):
        yield pair(folder), "tuning"
    for task in pairs.tasks(log=log):
        if not task.held_out and task.pair not in pairs.ONE_TYPE:
            yield task, task.split


def run_labels(*, quick, log=print, fractions=None, seeds=None, options=None, peers=True, tasks=None):
    """Score rows of every task, label fraction, seed and method, their summary, and the tasks
    skipped (each with why).

    `options` (training options on top of the benchmark's), `peers=False` and `tasks` (names of
    the tasks to run) serve experiments.
    """
    from .methods import scquery_config

    fractions = fractions or (QUICK_FRACTIONS if quick else FRACTIONS)
    seeds = seeds or (QUICK_SEEDS if quick else SEEDS)
    config = scquery_config(quick=quick, **(options or {}))
    rows, skipped, lowered = each_task(
        _methods, config, peers, quick=quick, fractions=fractions, seeds=seeds, log=log, tasks=tasks
    )
    return rows, summarize(rows), skipped, lowered


def each_task(runs, *args, quick, fractions, seeds, log=print, tasks=None):
    """On every task of `_tasks` (those named in `tasks`, where given), each in a spawned process of
    its own (its lines on standard output), `runs(task, split, fraction, seed, log, lowered, *args)`
    (a module-level function: its score rows) under every seed and fraction: the score rows,
    `skipped` and `lowered` entries of them all.

    TensorFlow keeps some memory for every model a process fits (about 50 MB per run on the real
    pairs), and a part's few hundred runs in one process outgrew a 24 GB machine."""
    rows, skipped, lowered = [], [], []
    for task, split in _tasks(quick, log=log):
        if tasks is not None and task.name not in tasks:
            continue
        log(f"{task.name} ({split}): {task.reference.n_obs} reference cells, {task.query.n_obs} query cells")
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as process:
            done = process.submit(_task_runs, runs, task, split, fractions, seeds, args).result()
        for kept, new in zip((rows, skipped, lowered), done, strict=True):
            kept.extend(new)
    return rows, skipped, lowered


def _task_runs(runs, task, split, fractions, seeds, args):
    """`each_task`'s work on one task: its rows, and its entries of `skipped` and `lowered`."""
    rows, skipped, lowered = [], [], []
    log = functools.partial(print, flush=True)
    with refusals(task, split, rows, skipped, log):
        for seed in seeds:
            for fraction in fractions:
                rows.extend(runs(task, split, fraction, seed, log, lowered, *args))
    return rows, skipped, lowered


def _methods(task, split, fraction, seed, log, lowered, config, peers):
    """Every method's score rows on one task, label fraction and seed."""
    run = _Run(task, split, fraction, seed, config, log, lowered)
    start = time.perf_counter()
    encoder = pretrain_on_query(run)
    log(
        f"  pretrained on {task.reference.n_obs} + {task.query.n_obs} cells "
        f"({fraction:.0%} labelled): {time.perf_counter() - start:.1f} s"
    )
    run.pretrained(encoder)
    run.scquery(REFERENCE_ALONE, encoder=pretrain_reference(run))
    run.no_pretraining()
    if peers:
        run.peers()
    return run.rows


def pretrain_reference(run, unlabeled=None):
    """The encoder pretrained on `run`'s reference (its kept labels choose the defining genes among
    the model's inputs, `marker_genes`) and the `unlabeled` cells, where given."""
    from scquery.train import pretrain

    return pretrain(run.partial, label_key="label", config=run.config, unlabeled=unlabeled, seed=run.seed)


def pretrain_on_query(run):
    """`pretrain_reference` with the run's query study's cells as the unlabelled data. Where scquery
    refuses them for sharing too few of the model's genes, they are given again with
    `unlabeled_min_overlap=LOW_OVERLAP`, and the run's query is read with `min_overlap=LOW_OVERLAP`."""
    try:
        return pretrain_reference(run, run.task.query)
    except TooFewGenes as refused:
        if run.min_overlap == LOW_OVERLAP or refused.option != "unlabeled_min_overlap":
            raise
        run.lowered.append(
            {"task": run.task.name, "split": run.split, "why": str(refused), "overlap": LOW_OVERLAP}
        )
        run.log(f"  {refused} (run again with unlabeled_min_overlap={LOW_OVERLAP})")
    run.lower_overlap()
    return pretrain_reference(run, run.task.query)


@contextlib.contextmanager
def refusals(task, split, rows, skipped, log):
    """Around one task's runs: where scquery refuses it (`ScqueryError`, the sentence a user would
    read), its `rows` so far are dropped and it joins `skipped`, with why."""
    try:
        yield
    except ScqueryError as refused:
        rows[:] = [row for row in rows if row["task"] != task.name]
        skipped.append({"task": task.name, "split": split, "why": str(refused)})
        log(f"  skipped: {refused}")


class _Run:
    """Every method on one task, label fraction and seed; the score rows in `rows`."""

    def __init__(self, task, split, fraction, seed, config, log, lowered):
        self.task, self.split = task, split
        self.fraction, self.seed, self.config, self.log = fraction, seed, config, log
        self.lowered, self.min_overlap = lowered, InputOptions.min_overlap  # see pretrain_on_query
        if task.name in {entry["task"] for entry in lowered}:
            self.lower_overlap()
        self.keep = keep_labels(task.reference.obs["label"], fraction, seed)
        self.labelled = task.reference[self.keep].copy()
        self.partial = _unlabelled(task.reference, self.keep)
        truth = task.query.obs["label"].astype(str).to_numpy()
        self.known = np.isin(truth, np.unique(task.reference.obs["label"].astype(str)))
        self.truth = truth[self.known]
        self.rows = []

    def lower_overlap(self):
        """Read the query study (as unlabelled data and as the query) at `LOW_OVERLAP`."""
        self.config = dataclasses.replace(self.config, unlabeled_min_overlap=LOW_OVERLAP)
        self.min_overlap = LOW_OVERLAP

    def record(self, method, predictions, seconds, **extra):
        row = {
            "task": self.task.name,
            "split": self.split,
            "fraction": self.fraction,
            "seed": self.seed,
            "method": method,
            "n_labelled": int(self.keep.sum()),
            **label_scores(self.truth, np.asarray(predictions)[self.known]),
            "seconds": round(seconds, 2),
            **extra,
        }
        self.rows.append(row)
        extra_text = ""
        if "classifier_macro_f1" in extra:
            extra_text = (
                f" (classifier {extra['classifier_macro_f1']:.3f}, Unknown {extra['unknown']:.1%}, "
                f"{extra.get('propagated', 0)} propagated)"
            )
        self.log(
            f"  {row['task']} {self.fraction:.0%} seed {self.seed} {method}: "
            f"macro-F1 {row['macro_f1']:.3f}{extra_text}, {seconds:.1f} s"
        )

    def scquery(self, method, *, config=None, **train_options):
        start = time.perf_counter()
        result = run_scquery(
            self.partial,
            self.task.query,
            config=config or self.config,
            seed=self.seed,
            species=getattr(self.task, "query_species", None),
            min_overlap=self.min_overlap,
            **train_options,
        )
        known = self.known
        self.record(
            method,
            result["prediction"],
            time.perf_counter() - start,
            classifier_macro_f1=label_scores(self.truth, result["classifier"][known])["macro_f1"],
            knn_macro_f1=label_scores(self.truth, result["knn"][known])["macro_f1"],
            unknown=float((result["prediction"][known] == "Unknown").mean()),
            propagated=result["propagated"],
        )

    def pretrained(self, encoder):
        """Pretrained on every reference cell and the query's (the encoder, of this fraction's genes),
        fine-tuned on the labelled cells; with and without propagated labels (the same model when
        every cell is labelled)."""
        self.scquery(QUERY, encoder=encoder)
        if self.fraction < 1:
            config = dataclasses.replace(self.config, propagate=False)
            self.scquery(NO_PROPAGATION, encoder=encoder, config=config)
        else:
            self.rows.append({**self.rows[-1], "method": NO_PROPAGATION})

    def no_pretraining(self):
        self.scquery(NONE, config=dataclasses.replace(self.config, pretrain=False))

    def peers(self):
        labelled = dataclasses.replace(self.task, reference=self.labelled)
        runs = {
            **peer_runs(labelled, self.seed),
            "CellTypist 1.7.1": lambda: shared_gene_celltypist(labelled),
        }
        for name, predict in runs.items():
            start = time.perf_counter()
            predictions = predict()
            if predictions is not None:
                self.record(name, predictions, time.perf_counter() - start)


def summarize(rows):
    """Mean and sd over seeds of macro-F1 (prediction and classifier head) and the Unknown share,
    per task, fraction and method."""
    table = pd.DataFrame(rows)
    for column in ("classifier_macro_f1", "unknown", "propagated"):
        if column not in table:
            table[column] = np.nan
    grouped = table.groupby(["split", "task", "fraction", "method"], sort=False)
    summary = grouped[
        ["macro_f1", "accuracy", "classifier_macro_f1", "unknown", "propagated", "seconds", "n_labelled"]
    ].mean()
    spread = grouped[["macro_f1", "classifier_macro_f1", "unknown"]].std(ddof=0).add_suffix("_sd")
    counts = grouped.size().rename("runs")
    return pd.concat([summary, spread, counts], axis=1).reset_index()
