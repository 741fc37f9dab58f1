"""Another species, simulated: a human reference queried with its cross-study query renamed to mouse genes.

No human–mouse pair of the same tissue is in ../shared/data, so the mechanics are measured on simulations
built from the cross-study pairs (`crossstudy_tasks`): the human query's genes are renamed to their mouse
orthologues with the built-in table (`scquery.orthologs`), and the human-trained model is queried with
`species='mouse'` and with the same pairs given as an explicit gene map (a TSV file). Two simulations:

- '1:1 only' (the issue's): the genes without a one-to-one orthologue are left out;
- 'with paralogues' (Baron: counts only): a human gene with several mouse orthologues has its counts split
  among them at random (binomial, seed 0), several human genes with one mouse orthologue are summed into it;
  this measures how several query genes of one reference gene are best combined (`collapse`: sum, mean,
  or drop = CellTypist's `Model.convert` default, one-to-one genes only).

Per way: the overlap with the model's genes before (by the query's own names, matched regardless of case as
every query is) and after mapping, the share of cells whose prediction equals the same-species query's
(target ≥ 0.98) and, for '1:1 only', the human query's on the same genes (what the mapping itself must
reproduce: the rest of the gap is the genes a mouse study cannot hold), and macro-F1. The model is trained
with `rebuild_missing` (which changes no training): the '1:1 only' query is given to it with its missing genes
read at their mean over the reference's types (the default) and rebuilt by its autoencoder. CellTypist (its
own environment, where configured) is trained on the same reference, converted to mouse by `Model.convert()`
and given the '1:1 only' query; its agreement is with its own human-query predictions.

Then the real thing, where the pair cache holds it (`real_pairs`): the cached pairs whose query is of another
species, the head's and the prediction's macro-F1 with the missing genes at their mean and rebuilt, 3 seeds.
"""

import dataclasses
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scquery.imputation import IMPUTER_KEY
from scquery.orthologs import GeneMap, builtin_map
from scquery.query import query
from scquery.train import train

from .crossstudy_tasks import baron_pair, pbmc_pair
from .methods import scquery_config
from .metrics import label_scores
from .pairs import tasks as cached_pairs
from .quality import celltypist_predictions
from .tasks import DATA_DIR
from .unknown_pairs import query_pair

TARGET = 0.98
#: The simulated query's way with the model's autoencoder rebuilding the genes it lacks.
REBUILT_WAY = "species='mouse', missing genes rebuilt"
#: Seeds of the real cross-species pairs.
REAL_SEEDS = (0, 1, 2)


def human_to_mouse():
    """The built-in human → mouse pairs by symbol (columns human, mouse)."""
    pairs = builtin_map("human", "mouse").pairs
    pairs = pairs[~pairs["query_gene"].str.startswith("ENSG")]
    return pairs.set_axis(["human", "mouse"], axis=1).reset_index(drop=True)


def one_to_one(adata, pairs):
    """`adata` with its genes renamed to their 1:1 mouse orthologues, the others left out; the pairs used."""
    unique = pairs[~pairs["human"].duplicated(keep=False) & ~pairs["mouse"].duplicated(keep=False)]
    unique = unique[unique["human"].isin(adata.var_names)]
    mouse = adata[:, unique["human"].to_numpy()].copy()
    mouse.var_names = unique["mouse"].to_numpy()
    return mouse, unique


def with_paralogues(adata, pairs, seed=0):
    """`adata` (counts) in mouse genes through every pair: a human gene's counts split at random among
    its mouse orthologues (multinomially, in equal shares), the human genes of one mouse gene summed."""
    pairs = pairs[pairs["human"].isin(adata.var_names)]
    human_genes = pd.unique(pairs["human"])
    mouse_genes = pd.Index(pd.unique(pairs["mouse"]))
    counts = sp.csc_matrix(adata[:, human_genes].X)
    rng = np.random.default_rng(seed)
    rows, columns, values = [], [], []
    for j, (_, group) in enumerate(pairs.groupby("human", sort=False)):  # in the order of human_genes
        cells = counts.indices[counts.indptr[j] : counts.indptr[j + 1]]
        n = np.rint(counts.data[counts.indptr[j] : counts.indptr[j + 1]]).astype(np.int64)
        targets = mouse_genes.get_indexer(group["mouse"])
        drawn = rng.multinomial(n, np.full(len(targets), 1.0 / len(targets)))
        rows.append(np.repeat(cells, len(targets)))
        columns.append(np.tile(targets, len(cells)))
        values.append(drawn.ravel())
    X = sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
        shape=(adata.n_obs, len(mouse_genes)),
        dtype=np.float32,
    )  # repeated entries (several human genes of one mouse gene) are summed
    X.eliminate_zeros()
    return ad.AnnData(X=X, obs=adata.obs.copy(), var=pd.DataFrame(index=mouse_genes))


def _agreement(a, b):
    return float((np.asarray(a, dtype=str) == np.asarray(b, dtype=str)).mean())


def _queried(adata, bundle, **options):
    annotated = adata.copy()
    query(annotated, bundle, **options)
    return annotated


def _row(task, simulation, way, annotated, same, truth):
    record = annotated.uns["scquery"]
    mapping = record.get("gene_map", {})
    predicted = annotated.obs["scquery_prediction"].astype(str).to_numpy()
    return {
        "task": task,
        "simulation": simulation,
        "way": way,
        "query_genes": int(annotated.n_vars),
        "overlap_before": mapping.get("overlap_before", record["overlap"])["fraction"],
        "overlap_after": record["overlap"]["fraction"],
        "one_to_one": mapping.get("one_to_one"),
        "one_to_many": mapping.get("one_to_many"),
        "many_to_one": mapping.get("many_to_one"),
        "agreement": _agreement(predicted, same),
        "macro_f1": label_scores(truth, predicted)["macro_f1"],
    }


class _Split:
    """What `quality.celltypist_predictions` reads: reference, query, values, task, fold."""

    def __init__(self, task, reference, query_data, values):
        self.reference, self.query, self.values = reference, query_data, values
        self.task, self.fold = task, "-"


def run_species(*, quick, seed=0, log=print):
    """The rows of every simulation (Baron only, with a small network, when `quick`)."""
    if not DATA_DIR.is_dir():
        return {"rows": []}
    pairs = human_to_mouse()
    rows, celltypist_rows = [], []
    for task in [baron_pair(DATA_DIR)] if quick else [pbmc_pair(DATA_DIR), baron_pair(DATA_DIR)]:
        log(f"{task.name}: {task.reference.n_obs} reference cells, {task.query.n_obs} query cells")
        rebuilding = train(task.reference, label_key="label", config=_rebuilding(quick), seed=seed)
        bundle = with_mean_levels(rebuilding)  # the same model: the option changes no training
        truth = task.query.obs["label"].astype(str).to_numpy()
        first = len(rows)
        human = _queried(task.query, bundle)
        same = human.obs["scquery_prediction"].astype(str).to_numpy()
        rows.append(_row(task.name, "none (human query)", "same species", human, same, truth))
        mouse, used = one_to_one(task.query, pairs)
        # The human query on the same genes: what the mapping itself should reproduce exactly.
        same_genes = _queried(task.query[:, used["human"].to_numpy()], bundle)
        same_genes = same_genes.obs["scquery_prediction"].astype(str).to_numpy()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "mouse_to_human.tsv"
            used[["mouse", "human"]].to_csv(path, sep="\t", index=False)
            ways = {
                "species='mouse'": (bundle, {"species": "mouse"}),
                "gene_map=FILE": (bundle, {"gene_map": path}),
                REBUILT_WAY: (rebuilding, {"species": "mouse"}),
            }
            for way, (model, options) in ways.items():
                annotated = _queried(mouse, model, **options)
                rows.append(_row(task.name, "1:1 only", way, annotated, same, truth))
                rows[-1]["agreement_same_genes"] = _agreement(annotated.obs["scquery_prediction"], same_genes)
        if task.query_values == "counts":
            paralogues = with_paralogues(task.query, pairs, seed=seed)
            builtin = builtin_map("mouse", "human")
            for collapse in ("sum", "mean", "drop"):
                gene_map = GeneMap(builtin.pairs, builtin.name, collapse, "mouse")
                annotated = _queried(paralogues, bundle, gene_map=gene_map)
                rows.append(
                    _row(task.name, "with paralogues", f"collapse={collapse!r}", annotated, same, truth)
                )
        for row in rows[first:]:
            log(
                f"  {row['simulation']}, {row['way']}: overlap {row['overlap_before']:.3f} → "
                f"{row['overlap_after']:.3f}, agreement {row['agreement']:.4f} "
                f"(same genes {row.get('agreement_same_genes', float('nan')):.4f}), "
                f"macro-F1 {row['macro_f1']:.3f}"
            )
        plain = celltypist_predictions(_Split(task.name, task.reference, task.query, task.reference_values))
        if plain is not None:
            values = task.query_values
            converted = celltypist_predictions(_Split(task.name, task.reference, mouse, values), convert=True)
            if converted is not None:
                celltypist_rows.append(
                    {
                        "task": task.name,
                        "agreement": _agreement(converted, plain),
                        "macro_f1_human": label_scores(truth, plain)["macro_f1"],
                        "macro_f1_converted": label_scores(truth, converted)["macro_f1"],
                    }
                )
                log(f"  CellTypist Model.convert: agreement {celltypist_rows[-1]['agreement']:.4f}")
    real = [] if quick else real_pairs(log=log)
    return {"target": TARGET, "rows": rows, "celltypist": celltypist_rows, "real": real}


def _rebuilding(quick):
    return scquery_config(quick=quick, rebuild_missing=True)


def with_mean_levels(bundle):
    """`bundle` without its autoencoder: a query's missing genes read at their mean over the types."""
    reference = bundle.reference.copy()
    reference.uns.pop(IMPUTER_KEY, None)
    return dataclasses.replace(bundle, reference=reference)


def real_pairs(*, log=print):
    """The cached pairs whose query is of another species (`benchmarks.pairs`, whole references): per
    seed of `REAL_SEEDS`, one model trained with `rebuild_missing`, its query's missing genes read at
    their mean and rebuilt; macro-F1 of the head and the prediction over the known query cells."""
    rows = []
    for task in cached_pairs(log=log):
        species = getattr(task, "query_species", None)
        if task.held_out or species is None:
            continue
        truth = task.query.obs["label"].astype(str).to_numpy()
        known = np.isin(truth, task.reference.obs["label"].astype(str).unique())
        for seed in REAL_SEEDS:
            rebuilding = train(task.reference, label_key="label", config=_rebuilding(False), seed=seed)
            for genes, model in (("mean", with_mean_levels(rebuilding)), ("rebuilt", rebuilding)):
                annotated, _, _ = query_pair(task, model)
                row = {"task": task.name, "split": task.split, "seed": seed, "missing genes": genes}
                row["overlap"] = annotated.uns["scquery"]["overlap"]["fraction"]
                for name in ("classifier", "prediction"):
                    predicted = annotated.obs[f"scquery_{name}"].astype(str).to_numpy()
                    row[name] = label_scores(truth[known], predicted[known])["macro_f1"]
                rows.append(row)
                log(
                    f"  {task.name}, seed {seed}, missing genes {genes}: head {row['classifier']:.3f}, "
                    f"prediction {row['prediction']:.3f}"
                )
    return rows
