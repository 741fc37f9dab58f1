"""How well predicted cell types match known ones: headline scores, per-type scores, confusion counts.

Unknown is not a cell type: a cell predicted Unknown counts as an error for accuracy and for the
recall of its known type, and Unknown comes last in every table. Macro-F1 averages over the known
types only (a predicted type the data does not hold is an error but adds no type to the average).
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from .errors import ScqueryError
from .labels import UNKNOWN, check_label_map, listed, read_label_map
from .preflight import missing_column
from .provenance import source_of

PREDICTION = "scquery_prediction"


def _labels(adata, truth, prediction):
    """`(known, predicted)` as string arrays; missing known labels are an error."""
    if prediction not in adata.obs:
        raise ScqueryError(f"The data has no obs column {prediction!r}; run the query first.")
    if truth not in adata.obs:
        source = source_of(adata)
        raise ScqueryError(missing_column(truth, adata.obs.columns, source, what="column of known types"))
    known = adata.obs[truth]
    if known.isna().any():
        raise ScqueryError(f"obs[{truth!r}] leaves {int(known.isna().sum())} cells without a known label.")
    return known.astype(str).to_numpy(), adata.obs[prediction].astype(str).to_numpy()


def type_order(adata, *keys, used_only=True):
    """The cell types in the obs columns `keys`, Unknown left out: the first column's, then the new
    ones of each other column, each group in the order of its categories (a query's prediction lists
    all the reference's types, so this order is the same for every query of a model) or sorted.
    With `used_only`, only the types some cell holds."""
    order, used = {}, set()
    for key in keys:
        column = adata.obs[key]
        if isinstance(column.dtype, pd.CategoricalDtype):
            names = [str(name) for name in column.cat.categories]
        else:
            names = sorted(column.dropna().astype(str).unique())
        order.update(dict.fromkeys(names))
        used.update(column.dropna().astype(str).unique())
    order.pop(UNKNOWN, None)
    return [name for name in order if name in used or not used_only]


class Scores(dict):
    """`score`'s numbers: a dict (full precision, as before) that prints rounded, on one line:
    `2,638 cells · accuracy 93.9% · macro-F1 0.912 · Unknown 2.1%`, and the label map when one
    renamed the known types (`· known types renamed by labels.tsv (9 names)`)."""

    def __str__(self):
        parts = [f"{self['cells']:,} cells"]
        if "accuracy" in self:
            parts += [f"accuracy {self['accuracy']:.1%}", f"macro-F1 {self['macro_f1']:.3f}"]
        parts.append(f"Unknown {self['unknown']:.1%}")
        if "label_map" in self:
            parts.append(f"known types renamed by {self['label_map']}")
        return " · ".join(parts)

    def __repr__(self):
        shown = ", ".join(
            f"{key}={round(value, 3) if isinstance(value, float) else value!r}" for key, value in self.items()
        )
        return f"Scores({shown})"


def score(adata, truth=None, *, prediction=PREDICTION, label_map=None) -> Scores:
    """Headline numbers of a query: `cells`, `predicted_types` (Unknown not counted), `unknown`
    (share of cells predicted Unknown); with the known types in `obs[truth]` also `known_types`,
    `accuracy` and `macro_f1`. A dict (`Scores`) that prints them rounded, on one line.

    The scores compare names: `label_map` (a dict {known name: the model's name}, or a CSV/TSV file
    of the two columns, `scquery.labels.read_label_map`) renames the known types first, and the
    scores then say so (`label_map`: the file, or 'a dict', and how many names). Where the known
    types and the prediction's types (the model's, its categories) share few names (under half of
    the cells' known types are among them), a warning says so with both lists of names.
    """
    if prediction not in adata.obs:
        raise ScqueryError(f"The data has no obs column {prediction!r}; run the query first.")
    predicted = adata.obs[prediction].astype(str).to_numpy()
    scores = {
        "cells": int(adata.n_obs),
        "predicted_types": int(len(set(predicted) - {UNKNOWN})),
        "unknown": float(np.mean(predicted == UNKNOWN)) if adata.n_obs else 0.0,
    }
    if truth is not None:
        known, predicted = _labels(adata, truth, prediction)
        vocabulary = _predicted_names(adata.obs[prediction])
        if label_map is not None:
            renames = read_label_map(label_map)
            check_label_map(renames, vocabulary, label_map)
            known = np.array([renames.get(name, name) for name in known], dtype=object).astype(str)
            name = "a dict" if isinstance(label_map, dict) else Path(label_map).name
            scores["label_map"] = f"{name} ({len(renames)} names)"
        _warn_if_few_shared(known, vocabulary, truth)
        types = sorted(set(known))
        scores["known_types"] = len(types)
        scores["accuracy"] = float(np.mean(known == predicted))
        scores["macro_f1"] = float(f1_score(known, predicted, labels=types, average="macro", zero_division=0))
    return Scores(scores)


def _predicted_names(column):
    """The type names a prediction column can hold (its categories, else its values), Unknown aside."""
    names = (
        column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column.dropna().unique()
    )
    return [str(name) for name in names if str(name) != UNKNOWN]


def _warn_if_few_shared(known, vocabulary, truth):
    """Warn when under half of the cells' known types are names the predictions use (the scores
    would count right answers under other names as wrong)."""
    names = sorted(set(known))
    shared = [name for name in names if name in set(vocabulary)]
    covered = float(np.isin(known, shared).mean()) if len(known) else 1.0
    if covered >= 0.5:
        return
    others = [name for name in names if name not in shared]
    warnings.warn(
        f"The known types in obs[{truth!r}] share {len(shared)} of their {len(names)} names with the "
        f"predicted types ({covered:.0%} of the cells), and the scores compare names: the known "
        f"{listed(others)} are none of the model's types ({listed(vocabulary)}). Give a label map from "
        "your names to the model's (--label-map FILE, label_map= of scq.score).",
        stacklevel=3,
    )


def per_type(adata, truth, *, prediction=PREDICTION) -> pd.DataFrame:
    """One row per cell type (known or predicted; `type_order`): `cells` known to be of the type,
    `predicted` as the type, `precision`, `recall`, `f1` and `unknown` (the share of its known cells
    predicted Unknown). Scores without cells to count are NaN."""
    known, predicted = _labels(adata, truth, prediction)
    types = type_order(adata, prediction, truth)
    precision, recall, f1, support = precision_recall_fscore_support(
        known, predicted, labels=types, zero_division=np.nan
    )
    table = pd.DataFrame(
        {
            "cells": support,
            "predicted": [int(np.sum(predicted == t)) for t in types],
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "unknown": [
                np.mean(predicted[known == t] == UNKNOWN) if np.any(known == t) else np.nan for t in types
            ],
        },
        index=pd.Index(types, name="cell type"),
    )
    table.loc[table["cells"] == 0, ["recall", "f1", "unknown"]] = np.nan
    return table


def confusion(adata, truth, *, prediction=PREDICTION, normalize=True) -> pd.DataFrame:
    """The square confusion table: rows the known types, columns the predicted ones in the same order
    (`type_order`), then an Unknown column. With `normalize`, each row holds shares of its known
    cells (rows without cells are NaN), else counts."""
    known, predicted = _labels(adata, truth, prediction)
    types = type_order(adata, prediction, truth)
    columns = types + [UNKNOWN]
    counts = pd.crosstab(
        pd.Categorical(known, categories=types), pd.Categorical(predicted, categories=columns)
    )
    counts = counts.reindex(index=types, columns=columns, fill_value=0)
    counts.index.name, counts.columns.name = "known", "predicted"
    if not normalize:
        return counts
    totals = counts.sum(axis=1)
    return counts.div(totals.where(totals > 0), axis=0)


def summarize(adata, *, groupby=None, matches=None, key="scquery"):
    """Per query dataset (`obs['dataset']`, when present) and `groupby` group: what the cells are.

    One row per group: `n_cells`, `mean_distance`, the share of each predicted type
    (`fraction <type>`), and the reference dataset and label nearest the group's cells most often
    with their shares (`nearest_dataset`, `nearest_dataset_share`, `nearest_label`,
    `nearest_label_share`), counted over `matches` (all `k` neighbours, as `query` returns them)
    or, without them, over each cell's nearest reference cell.
    """
    obs = adata.obs
    prediction = f"{key}_prediction"
    if prediction not in obs:
        raise ScqueryError(f"The data has no obs['{prediction}']; run the query first.")
    if groupby is not None and groupby not in obs:
        raise ScqueryError(f"The data has no obs column {groupby!r} to group by; choose another.")
    keys = [c for c in ("dataset", groupby) if c is not None and c in obs]
    groups = obs[keys].astype(str) if keys else pd.DataFrame({"group": "all"}, index=obs.index)
    keys = list(groups.columns)
    if matches is None:
        matches = pd.DataFrame(
            {
                "query_cell": obs.index,
                "reference_label": obs[f"{key}_nearest_label"].to_numpy(),
                "reference_dataset": obs[f"{key}_nearest_dataset"].to_numpy(),
            }
        )
    cells = groups.assign(prediction=obs[prediction].astype(str), distance=obs[f"{key}_distance"])
    grouped = cells.groupby(keys)
    summary = pd.DataFrame({"n_cells": grouped.size(), "mean_distance": grouped["distance"].mean()})
    shares = pd.crosstab([cells[c] for c in keys], cells["prediction"], normalize="index")
    summary = summary.join(shares.add_prefix("fraction "))
    located = groups.iloc[_query_rows(obs.index, matches["query_cell"])].reset_index(drop=True)
    nearest = {"reference_dataset": "nearest_dataset", "reference_label": "nearest_label"}
    for column, name in nearest.items():
        counts = pd.crosstab(
            [located[c] for c in keys], matches[column].astype(str).to_numpy(), normalize="index"
        )
        summary[name] = counts.idxmax(axis=1)
        summary[f"{name}_share"] = counts.max(axis=1)
    return summary.reset_index()


def _query_rows(names, query_cells):
    """The row of each match's query cell: by name, or by position where names repeat (the
    matches of `query` list each cell's neighbours in the data's order)."""
    if names.is_unique:
        rows = names.get_indexer(query_cells)
        if (rows < 0).any():
            raise ScqueryError(
                "The matches name query cells the data does not hold; give the matches of this data."
            )
        return rows
    n, k = len(names), len(query_cells) // max(len(names), 1)
    if n * k != len(query_cells) or not np.array_equal(np.repeat(names.to_numpy(), k), query_cells):
        raise ScqueryError(
            "The query's cell names repeat and the matches are not in its order; give the matches "
            "`query` returned for this data, or make the names unique (obs_names_make_unique)."
        )
    return np.repeat(np.arange(n), k)
