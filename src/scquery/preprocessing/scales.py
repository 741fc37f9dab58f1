"""The values' scale: recognizing what a matrix holds, undoing it, and normalizing like the reference.

`detect_values` tells what a matrix holds (raw counts; counts normalized per cell, such as CPM, CP10k
or TPM; either of them on a log scale of base e, 2 or 10; or centred/scaled values), and `to_linear`
undoes what can be undone exactly, so that both the reference and a query are normalized the same way
(`normalize_parts`: `normalize_total` to the reference's `target_sum` on the data's own genes, then
`log1p`) whatever scale they arrive in. Values normalized over more genes than the data still holds
(their cells' totals differ) keep each cell's own scale, with the total taken as the smallest usual
one (1e4, 1e5, …) above every cell's sum, and a warning when that differs from the reference's.
Centred or scaled values cannot be undone and are refused. Each dataset of a merged AnnData is
recognized on its own (`recognize`).

Every step is row by row, so blocks of rows give the answers of the whole: `row_flags` and `decide`
recognize a scale from per-row flags gathered block by block (`scquery.preprocessing.fit`) exactly
as `detect_values` does on the whole matrix. Matrices come in and go out as CSR float32.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from ..errors import ScqueryError
from ..values import to_csr32

#: Log bases a matrix may be on (`log_b(1 + x)`), by name; None is the linear scale.
LOG_BASES = {None: None, "e": np.e, "2": 2.0, "10": 10.0}
#: Largest value of a log-scaled matrix (log2 of a million is 20) taken as log-like when unrecognized.
MAX_LOG = 20.0
#: Within-cell value ratios up to this one decide whether a cell's values are multiples of one unit.
_RATIO_MAX = 20.0
#: Cells sampled to recognize the scale, and the seed they are drawn with (fixed: the same data is
#: always recognized alike).
_SAMPLE, _SAMPLE_SEED = 500, 0


def linear_values(data, base):
    """`b**x - 1` of the values (the inverse of `log_b(1 + x)`), float64; the values on a linear scale."""
    data = np.asarray(data, dtype=np.float64)
    if base is None:
        return data
    with np.errstate(over="ignore"):
        return np.expm1(data * np.log(LOG_BASES[base]))


def _units(X, data):
    """Per row of CSR `X` (with `data` in place of its values): whether the row's values are whole
    multiples of its smallest value (checked on ratios up to `_RATIO_MAX`, to 1e-2 + 2e-3 × ratio, so
    values rounded to three decimals still pass), whether the row says anything (two values of
    ratio 1.5 or more), and the ratios themselves."""
    lengths = np.diff(X.indptr)
    nonempty = lengths > 0
    unit = np.zeros(X.shape[0])
    unit[nonempty] = np.minimum.reduceat(data, X.indptr[:-1][nonempty])
    rows = np.repeat(np.arange(X.shape[0]), lengths)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a ratio too large is unchecked
        ratios = data / unit[rows]
        checked = ratios <= _RATIO_MAX
        off = checked & (np.abs(ratios - np.round(ratios)) > 1e-2 + 2e-3 * ratios)
    n_checked = np.bincount(rows, weights=checked, minlength=X.shape[0])
    n_off = np.bincount(rows, weights=off, minlength=X.shape[0])
    n_large = np.bincount(rows, weights=checked & (ratios >= 1.5), minlength=X.shape[0])
    whole = nonempty & (n_off <= 0.02 * n_checked)
    return whole, n_large >= 2, ratios


def detect_values(X):
    """What a cells × genes matrix holds, and on which scale.

    Returns a JSON-serializable dict: `values` is `'counts'` (non-negative integers),
    `'normalized'` (counts scaled per cell: CPM, CP10k, TPM, …), `'scaled'` (negative values:
    centred or z-scored, which cannot be undone) or `'unrecognized'` (non-negative values of
    neither kind); `log_base` (`None`, `'e'`, `'2'` or `'10'`) says whether they are on a
    `log_b(1 + x)` scale; `target_sum` is the cells' common total on the linear scale when they
    share one (None otherwise).

    A scale is recognized from the count structure that survives normalization: within a cell,
    the linear values of counts scaled by one factor are whole multiples of the cell's smallest
    value (checked on up to 500 sampled cells, for each log base; recognized when at least 90 % of
    the informative cells pass for exactly one base), or else from the cells' totals being equal
    on exactly one scale.
    """
    return _detect(to_csr32(X))


def _detect(X):
    """`detect_values` of the CSR float32 matrix `X`."""
    return decide(np.diff(X.indptr), *row_flags(X), lambda rows: X[rows])


def row_flags(block):
    """Per row of a CSR block: whether it holds a negative value, and one not a whole number."""
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    data = block.data
    negative = np.bincount(rows[data < 0], minlength=block.shape[0]) > 0
    fraction = np.bincount(rows[data != np.round(data)], minlength=block.shape[0]) > 0
    return negative, fraction


def decide(nnz, negative, fraction, read):
    """`detect_values` from per-row facts: the rows' numbers of stored values `nnz`, their
    `row_flags`, and `read(rows)`, which gives those rows (sorted) as CSR float32."""
    found = {"values": "counts", "log_base": None, "target_sum": None}
    if nnz.sum() == 0:
        return found
    if negative.any():
        return {**found, "values": "scaled"}
    if not fraction.any():
        return found
    return _scale_of(read(_sample_rows(nnz)))


def _sample_rows(row_nnz):
    """The rows (sorted) that `detect_values` recognizes a scale on: up to 500 of the rows holding a
    value (`row_nnz > 0`), drawn with a fixed seed."""
    filled = np.flatnonzero(np.asarray(row_nnz) > 0)
    rng = np.random.default_rng(_SAMPLE_SEED)
    return np.sort(rng.choice(filled, min(_SAMPLE, filled.size), replace=False))


def _scale_of(sample):
    """What the sampled rows `sample` (CSR, non-negative values not all whole numbers) hold: the
    scale part of `detect_values`."""
    found = {"values": "counts", "log_base": None, "target_sum": None}
    scores, totals = {}, {}
    for base in LOG_BASES:
        linear = linear_values(sample.data, base)
        whole, informative, _ = _units(sample, linear)
        enough = informative.sum() >= min(20, len(informative))
        scores[base] = whole[informative].mean() if enough else 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            sums = np.add.reduceat(linear, sample.indptr[:-1])
        middle = np.median(sums)
        if np.isfinite(sums).all() and middle > 0 and np.abs(sums / middle - 1).max() <= 1e-2:
            totals[base] = float(middle)
    passing = [base for base, score in scores.items() if score >= 0.9]
    if len(passing) == 1:
        base = passing[0]
    elif len(totals) == 1:
        base = next(iter(totals))
    else:
        return {**found, "values": "unrecognized"}
    linear = linear_values(sample.data, base)
    counts = (np.abs(linear - np.round(linear)) <= 1e-2 + 1e-5 * linear).all()
    return {
        "values": "counts" if counts else "normalized",
        "log_base": base,
        "target_sum": totals.get(base),
    }


def to_linear(X, values):
    """Values proportional to each cell's counts: the inverse of `values`'s scale (CSR float32 `X`
    in and out).

    `values` is what `detect_values` found. Log scales are undone; in a cell whose linear values are
    whole multiples of its smallest value they are rounded to those multiples (counts up to the
    cell's scale factor, which normalization removes), so that counts and any normalized or logged
    form of them give the same matrix after normalization. Raises `ValueError` for values that
    cannot be undone (`'scaled'`, `'unrecognized'`).
    """
    if values["values"] not in ("counts", "normalized"):
        raise ValueError(f"{values['values']} values cannot be brought back to a linear scale")
    if values["values"] == "counts" and values["log_base"] is None:
        return X
    linear = linear_values(X.data, values["log_base"])
    whole, _, ratios = _units(X, linear)
    rows = np.repeat(whole, np.diff(X.indptr))
    linear = np.where(rows, np.round(ratios), linear)
    return sp.csr_matrix((linear.astype(np.float32), X.indices.copy(), X.indptr.copy()), shape=X.shape)


def describe_values(values):
    """A few words for what `detect_values` found, e.g. 'log2(1 + normalized values, total 1e+06)'."""
    kind = {"counts": "counts", "normalized": "normalized values"}.get(values["values"], values["values"])
    if values.get("target_sum"):
        kind += f" (total {values['target_sum']:.4g} per cell)"
    base = values.get("log_base")
    if base is not None:
        kind = f"{'log' if base == 'e' else 'log' + base}(1 + {kind})"
    return kind


def cell_datasets(obs):
    """Each cell's dataset (`obs['dataset']`) where the cells come from two or more, else None."""
    if "dataset" not in obs:
        return None
    datasets = obs["dataset"].astype(str).to_numpy()
    return datasets if len(set(datasets)) > 1 else None


def recognize(X, datasets):
    """What the values of CSR float32 `X` are, per dataset (`datasets`: each row's, or None): a dict
    from a dataset's name (None: the whole) to its rows and what `detect_values` found in them, as
    `normalize_parts` takes it."""
    if datasets is None:
        return {None: (np.arange(X.shape[0]), _detect(X))}
    parts = {}
    for name in pd.unique(datasets):
        rows = np.flatnonzero(datasets == name)
        parts[name] = (rows, _detect(X[rows]))
    return parts


def _found_values(parts):
    """What was found (`recognize`'s parts, or values by dataset): one dict, or one per dataset."""
    return parts[None][1] if list(parts) == [None] else {name: part[1] for name, part in parts.items()}


def normalize_parts(X, parts, target_sum, source):
    """`X` log-normalized to `target_sum` part by part: `parts` maps a dataset's name (None: the
    whole) to its rows of `X` and what `detect_values` found in it. Returns the matrix and the
    values found (one dict, or one per dataset)."""
    if list(parts) == [None]:
        return _normalized(X, parts[None][1], target_sum, source), _found_values(parts)
    blocks = []
    for name, (rows, values) in parts.items():
        blocks.append((rows, _normalized(X[rows], values, target_sum, f"{source} (dataset {name})")))
    order = np.argsort(np.concatenate([rows for rows, _ in blocks]))
    stacked = sp.vstack([block for _, block in blocks], format="csr")[order]
    return sp.csr_matrix(stacked, dtype=np.float32), _found_values(parts)


def _log_normalize(X, target_sum):
    """log1p of each cell's values scaled to `target_sum` in total (scanpy), as CSR float32."""
    tmp = ad.AnnData(X.copy())
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return sp.csr_matrix(tmp.X, dtype=np.float32)


def _normalized(X, values, target_sum, source):
    """log1p of the values brought to `target_sum` per cell, as `values` allows (one warning or one
    `ScqueryError` where they cannot be undone)."""
    if values["values"] == "scaled":
        raise ScqueryError(
            f"The values of {source} are centred or scaled (they have negative values, e.g. z-scores), "
            "which cannot be turned back into expression levels; give the counts or the log-normalized "
            "values instead (for example from a layer or .raw: --layer/--use-raw, layer=/use_raw=)."
        )
    if values["values"] == "unrecognized":
        top = X.data.max() if X.nnz else 0.0
        how = "as log1p-normalized values, as they are" if top <= MAX_LOG else "as normalized values"
        warnings.warn(
            f"The values of {source} are neither counts nor counts normalized per cell on a linear or "
            f"log scale; they are used {how}. Give the counts if you have them.",
            stacklevel=3,
        )
        if top <= MAX_LOG:
            return X
        return _log_normalize(X, target_sum)
    if values["values"] == "counts" or values["target_sum"]:
        return _log_normalize(to_linear(X, values), target_sum)
    # Normalized over genes the data no longer holds: the cells' own totals are unknown, so their
    # scale is kept and only the total is taken as the smallest usual one above every cell's sum.
    linear = sp.csr_matrix(
        (linear_values(X.data, values["log_base"]).astype(np.float32), X.indices.copy(), X.indptr.copy()),
        shape=X.shape,
    )
    # the whole data's total where it is known (data read in blocks: `scquery.preprocessing.fit`)
    assumed = values.get("assumed_target_sum") or assumed_total(linear)
    values["assumed_target_sum"] = assumed
    if assumed != target_sum:
        warnings.warn(
            f"The values of {source} were normalized per cell over genes it no longer holds, so their "
            f"total is unknown; it is taken as {assumed:g} (the smallest usual total above every cell's "
            "sum). Give the counts if you have them.",
            stacklevel=3,
        )
    linear.data *= target_sum / assumed
    linear.data = np.log1p(linear.data)
    return linear


def assumed_total(linear):
    """The smallest of 1e4, 1e5, 1e6, … at least as large as every row's sum."""
    top = float(np.asarray(linear.sum(axis=1)).max()) if linear.nnz else 0.0
    return float(10 ** max(4, int(np.ceil(np.log10(max(top, 1.0)) - 1e-9))))
