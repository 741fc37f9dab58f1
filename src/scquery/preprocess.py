"""Preprocessing a reference, and processing a query exactly like it.

`fit_preprocess` filters, normalizes and selects genes on a reference and returns a plain,
JSON-serializable record of every parameter; `apply_preprocess` uses that record on a query.

Input scales: `detect_values` tells what a matrix holds (raw counts; counts normalized per cell, such
as CPM, CP10k or TPM; either of them on a log scale of base e, 2 or 10; or centred/scaled values), and
`to_linear` undoes what can be undone exactly, so that both the reference and a query are normalized
the same way (`normalize_total` to the reference's `target_sum` on the data's own genes, then
`log1p`) whatever scale they arrive in. Values normalized over more genes than the data still holds
(their cells' totals differ) keep each cell's own scale, with the total taken as the smallest usual
one (1e4, 1e5, …) above every cell's sum, and a warning when that differs from the reference's.
Centred or scaled values cannot be undone and are refused.

Scaling stays sparse-friendly: z-scoring would make the whole matrix dense, so `scale=True` only
records the reference's gene means and standard deviations; `.X` stays sparse log1p values and
the model's first layer (`keras.layers.Normalization`, see `scquery.classifier`) standardizes each
mini-batch, so the saved model scales a query exactly like the reference.
"""

import dataclasses
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from .errors import ScqueryError
from .options import InputOptions
from .orthologs import (
    SPECIES,
    builtin_map,
    detect_species,
    gene_lookup,
    map_genes,
    match_keys,
    read_gene_map,
    species_hint,
)
from .values import check_matrix, source_of, to_csr32

__all__ = [
    "align_genes",
    "apply_preprocess",
    "detect_values",
    "fit_preprocess",
    "qc_cells",
    "to_linear",
]

RECORD_VERSION = 1


def _matrix(adata):
    """`adata.X` as a checked CSR float32 matrix (backed data is loaded into memory)."""
    X = adata.X
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        X = X[:]
    X = to_csr32(X)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ScqueryError(
            f"{source_of(adata)} holds {X.shape[0]} cells and {X.shape[1]} genes; give data with "
            "at least one cell and one gene."
        )
    check_matrix(X, source_of(adata))
    return X


#: Log bases a matrix may be on (`log_b(1 + x)`), by name; None is the linear scale.
LOG_BASES = {None: None, "e": np.e, "2": 2.0, "10": 10.0}
#: Largest value of a log-scaled matrix (log2 of a million is 20) taken as log-like when unrecognized.
MAX_LOG = 20.0
#: Within-cell value ratios up to this one decide whether a cell's values are multiples of one unit.
_RATIO_MAX = 20.0
#: Cells sampled to recognize the scale.
_SAMPLE = 500


def _linear_values(data, base):
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


def detect_values(X, *, seed=0):
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
    X = to_csr32(X)
    data = X.data
    found = {"values": "counts", "log_base": None, "target_sum": None}
    if data.size == 0:
        return found
    if data.min() < 0:
        return {**found, "values": "scaled"}
    if np.array_equal(data, np.round(data)):
        return found
    return scale_of(X[sample_rows(np.diff(X.indptr), seed=seed)])


def sample_rows(row_nnz, *, seed=0):
    """The rows (sorted) that `detect_values` recognizes a scale on: up to 500 of the rows holding a
    value (`row_nnz > 0`), drawn with `seed`."""
    filled = np.flatnonzero(np.asarray(row_nnz) > 0)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(filled, min(_SAMPLE, filled.size), replace=False))


def scale_of(sample):
    """What the sampled rows `sample` (CSR, non-negative values not all whole numbers) hold: the
    scale part of `detect_values`."""
    found = {"values": "counts", "log_base": None, "target_sum": None}
    scores, totals = {}, {}
    for base in LOG_BASES:
        linear = _linear_values(sample.data, base)
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
    linear = _linear_values(sample.data, base)
    counts = (np.abs(linear - np.round(linear)) <= 1e-2 + 1e-5 * linear).all()
    return {
        "values": "counts" if counts else "normalized",
        "log_base": base,
        "target_sum": totals.get(base),
    }


def to_linear(X, values):
    """Values proportional to each cell's counts (CSR float32): the inverse of `values`'s scale.

    `values` is what `detect_values` found. Log scales are undone; in a cell whose linear values are
    whole multiples of its smallest value they are rounded to those multiples (counts up to the
    cell's scale factor, which normalization removes), so that counts and any normalized or logged
    form of them give the same matrix after normalization. Raises `ValueError` for values that
    cannot be undone (`'scaled'`, `'unrecognized'`).
    """
    if values["values"] not in ("counts", "normalized"):
        raise ValueError(f"{values['values']} values cannot be brought back to a linear scale")
    X = to_csr32(X)
    if values["values"] == "counts" and values["log_base"] is None:
        return X
    linear = _linear_values(X.data, values["log_base"])
    whole, _, ratios = _units(X, linear)
    rows = np.repeat(whole, np.diff(X.indptr))
    linear = np.where(rows, np.round(ratios), linear)
    return to_csr32(sp.csr_matrix((linear, X.indices.copy(), X.indptr.copy()), shape=X.shape))


def describe_values(values):
    """A few words for what `detect_values` found, e.g. 'log2(1 + normalized values, total 1e+06)'."""
    kind = {"counts": "counts", "normalized": "normalized values"}.get(values["values"], values["values"])
    if values.get("target_sum"):
        kind += f" (total {values['target_sum']:.4g} per cell)"
    base = values.get("log_base")
    if base is not None:
        kind = f"{'log' if base == 'e' else 'log' + base}(1 + {kind})"
    return kind


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
    linear = to_csr32(
        sp.csr_matrix((_linear_values(X.data, values["log_base"]), X.indices, X.indptr), X.shape)
    )
    # the whole data's total where it is known (data read in blocks: `scquery.stream`)
    assumed = values.get("assumed_target_sum") or _assumed_total(linear)
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


def _assumed_total(linear):
    """The smallest of 1e4, 1e5, 1e6, … at least as large as every row's sum."""
    top = float(np.asarray(linear.sum(axis=1)).max()) if linear.nnz else 0.0
    return float(10 ** max(4, int(np.ceil(np.log10(max(top, 1.0)) - 1e-9))))


def _detect_per_dataset(adata, X):
    """`detect_values` for each dataset of a merged AnnData (`obs['dataset']`), or the whole."""
    datasets = adata.obs["dataset"].astype(str).to_numpy() if "dataset" in adata.obs else None
    if datasets is None or len(set(datasets)) < 2:
        return {None: (np.arange(X.shape[0]), detect_values(X))}
    parts = {}
    for name in pd.unique(datasets):
        rows = np.flatnonzero(datasets == name)
        parts[name] = (rows, detect_values(X[rows]))
    return parts


def _to_log_normalized(adata, X, target_sum):
    """`X` (the data's values) normalized like the reference: each dataset of a merged AnnData on
    its own scale. Returns the matrix and what was found (one dict, or one per dataset)."""
    return normalize_parts(X, _detect_per_dataset(adata, X), target_sum, source_of(adata))


def normalize_parts(X, parts, target_sum, source):
    """`X` log-normalized to `target_sum` part by part: `parts` maps a dataset's name (None: the
    whole) to its rows of `X` and what `detect_values` found in it. Returns the matrix and the
    values found (one dict, or one per dataset)."""
    if list(parts) == [None]:
        values = parts[None][1]
        return _normalized(X, values, target_sum, source), values
    blocks = []
    for name, (rows, values) in parts.items():
        blocks.append((rows, _normalized(X[rows], values, target_sum, f"{source} (dataset {name})")))
    order = np.argsort(np.concatenate([rows for rows, _ in blocks]))
    stacked = sp.vstack([block for _, block in blocks], format="csr")[order]
    return to_csr32(stacked), {name: values for name, (_, values) in parts.items()}


def _log_normalize(X, target_sum):
    """log1p of each cell's values scaled to `target_sum` in total (scanpy), as CSR float32."""
    tmp = ad.AnnData(X.copy())
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return to_csr32(tmp.X)


def _obs_result(adata, cells, X, var, uns_values):
    """A new AnnData with the kept `cells` (all obs columns and obsm) and the given `X`, `var`."""
    out = ad.AnnData(X=X, obs=adata.obs.iloc[cells].copy(), var=var)
    for key, value in adata.obsm.items():
        out.obsm[key] = value.iloc[cells] if isinstance(value, pd.DataFrame) else value[cells]
    out.uns["scquery"] = {"source": source_of(adata), "values": uns_values, "preprocessed": True}
    return out


def _qc_cells(adata, X, min_genes, max_pct_mito):
    """Indices of the cells of `adata` (values `X`) passing quality control (see `qc_cells`)."""
    source = source_of(adata)
    mito = mito_genes(adata.var_names, source, max_pct_mito)
    return passing_cells(qc_mask(X, mito, min_genes, max_pct_mito), source, min_genes, max_pct_mito)


def mito_genes(names, source, max_pct_mito):
    """The mask of mitochondrial genes (`MT-`/`mt-`) among `names` where `max_pct_mito` asks for
    them (a warning when there are none), else None."""
    if max_pct_mito is None:
        return None
    mito = np.asarray(pd.Index(names).astype(str).str.startswith(("MT-", "mt-")))
    if not mito.any():
        warnings.warn(f"{source} has no mitochondrial genes (MT-/mt-).", stacklevel=4)
    return mito


def qc_mask(X, mito, min_genes, max_pct_mito):
    """Which rows of `X` (linear values) pass quality control (`mito`: `mito_genes`), row by row:
    blocks of rows give the same answers as the whole."""
    keep_cells, _ = sc.pp.filter_cells(X, min_genes=min_genes, inplace=False)
    if max_pct_mito is not None:
        qc, _ = sc.pp.calculate_qc_metrics(
            ad.AnnData(X, var=pd.DataFrame({"mt": mito}, index=np.arange(X.shape[1]).astype(str))),
            qc_vars=["mt"],
            percent_top=None,
            log1p=False,
            inplace=False,
        )
        keep_cells &= qc["pct_counts_mt"].to_numpy() <= max_pct_mito
    return keep_cells


def passing_cells(keep_cells, source, min_genes, max_pct_mito):
    """The indices of the cells kept (`keep_cells`, a mask); none is an error."""
    cells = np.flatnonzero(keep_cells)
    if cells.size == 0:
        raise ScqueryError(
            f"No cells of {source} pass quality control (min_genes={min_genes}, "
            f"max_pct_mito={max_pct_mito}); lower min_genes or raise max_pct_mito."
        )
    return cells


def qc_cells(adata, *, min_genes=200, max_pct_mito=None):
    """Indices of the cells of `adata` with at least `min_genes` expressed genes and (when
    `max_pct_mito` is set) at most that percentage of their values in mitochondrial genes (names
    starting `MT-`/`mt-`): `fit_preprocess`'s quality control. No cell passing is an error."""
    return _qc_cells(adata, _matrix(adata), min_genes, max_pct_mito)


def fit_preprocess(
    adata,
    *,
    min_genes=200,
    min_cells=3,
    max_pct_mito=None,
    target_sum=1e4,
    n_top_genes=2000,
    genes=None,
    scale=False,
    species=None,
):
    """Filter, normalize and select the genes of a reference; return the result and its record.

    Steps: keep cells with at least `min_genes` expressed genes and (when `max_pct_mito` is set) at
    most that percentage of their values in mitochondrial genes (names starting `MT-`/`mt-`);
    bring the values to a linear scale (`detect_values`, `to_linear`; centred or scaled values are
    refused, each dataset of a merged reference is recognized on its own), `normalize_total(target_sum)`
    and `log1p` on all genes; keep genes expressed in at least
    `min_cells` kept cells; select the `n_top_genes` most variable (`highly_variable_genes`,
    flavor 'seurat'; all genes when there are no more) or, when given, exactly `genes` (missing
    ones zero-filled, `min_cells` not applied); with `scale`, record gene means and standard
    deviations (applied by the model's `Normalization` layer). `species` ('human', 'mouse' or None:
    detected from the gene names, `scquery.orthologs.detect_species`) is recorded for queries of
    another species.

    Returns:
        `(result, record)`: `result.X` is CSR float32 of the selected genes in record order, obs
        holds every original column for the kept cells; `record` is a JSON-serializable dict
        (`record['values']`: what `detect_values` found).
    """
    source = source_of(adata)
    if species is not None and species not in SPECIES:
        raise ScqueryError(
            f"species={species!r} is not known; choose one of {', '.join(SPECIES)} or leave it out."
        )
    X = _matrix(adata)
    n_cells, n_genes = X.shape
    X, values = _to_log_normalized(adata, X, target_sum)
    linear = X.copy()
    linear.data = np.expm1(linear.data)
    cells = _qc_cells(adata, linear, min_genes, max_pct_mito)
    X = X[cells]

    qc_record = {
        "min_genes": int(min_genes),
        "min_cells": int(min_cells),
        "max_pct_mito": None if max_pct_mito is None else float(max_pct_mito),
        "n_cells_before": int(n_cells),
        "n_cells_after": int(cells.size),
        "n_genes_before": int(n_genes),
    }
    var = adata.var.copy()
    var.index = var.index.astype(str)
    if genes is not None:
        genes = given_genes(genes)
        aligned, _ = align_genes(ad.AnnData(X, var=var, uns={"scquery": {"source": source}}), genes)
        X, var, selection = aligned.X, aligned.var, "given"
    else:
        keep_genes, _ = sc.pp.filter_genes(X, min_cells=min_cells, inplace=False)
        if not keep_genes.any():
            raise ScqueryError(
                f"No genes of {source} are expressed in {min_cells} or more cells after quality "
                "control; lower min_cells."
            )
        X, var = X[:, keep_genes], var.iloc[np.flatnonzero(keep_genes)]
        selection = "all"
        if n_top_genes < X.shape[1]:
            hvg = sc.pp.highly_variable_genes(
                ad.AnnData(X, var=pd.DataFrame(index=var.index)),
                flavor="seurat",
                n_top_genes=int(n_top_genes),
                inplace=False,
            )
            chosen = np.flatnonzero(hvg["highly_variable"].to_numpy())
            X, var, selection = X[:, chosen], var.iloc[chosen], "highly_variable"
        genes = list(var.index)
    qc_record["n_genes_after"] = len(genes)

    scale_record = None
    if scale:
        mean, variance = mean_variance_axis(sp.csr_matrix(X, dtype=np.float64), axis=0)
        scale_record = scale_of_genes(mean, variance, X.shape[0])
    record = make_record(values, target_sum, selection, n_top_genes, genes, species, scale_record, qc_record)
    record["species"] = species or detect_species(adata.var_names)
    result = _obs_result(adata, cells, to_csr32(X), var, values)
    return result, record


def given_genes(genes):
    """The `genes` option as a list of names, each given once."""
    genes = [str(g) for g in genes]
    if len(set(genes)) != len(genes) or not genes:
        raise ScqueryError("The given gene list is empty or names a gene twice; give each gene once.")
    return genes


def scale_of_genes(mean, variance, n):
    """The `scale` record of genes of these means and (population) variances over `n` cells: the
    sample standard deviation, 1 where it is 0."""
    std = np.sqrt(np.asarray(variance) * n / max(n - 1, 1))
    std[std == 0] = 1.0
    return {"mean": np.asarray(mean).tolist(), "std": std.tolist()}


def make_record(values, target_sum, selection, n_top_genes, genes, species, scale_record, qc_record):
    """The preprocessing record (see `fit_preprocess`); `species` as given (None: to be detected)."""
    return {
        "version": RECORD_VERSION,
        "values": values,
        "normalized": True,
        "log1p": True,
        "target_sum": float(target_sum),
        "gene_selection": selection,
        "n_top_genes": int(n_top_genes),
        "hvg_flavor": "seurat",
        "genes": genes,
        "species": species,
        "scale": scale_record,
        "qc": qc_record,
        "n_cells": int(qc_record["n_cells_after"]),
    }


def _gene_names(adata, gene_key):
    """The gene names of `adata`: `var_names`, or the `var` column `gene_key`."""
    if gene_key is None:
        return adata.var_names
    if gene_key not in adata.var:
        columns = ", ".join(map(str, adata.var.columns)) or "none"
        raise ScqueryError(
            f"The gene column {gene_key!r} is not in the var of {source_of(adata)} (columns: {columns}); "
            "choose one of them or leave out gene_key."
        )
    return adata.var[gene_key]


def align_genes(adata, genes, inputs=InputOptions()):
    """Reorder the genes of `adata` to `genes`, zero-filling the missing ones (sparse).

    Genes match exactly first, then case-insensitively; Ensembl version suffixes are ignored on
    both sides. `inputs.gene_key` names a `var` column to match on instead of `var_names`. A data
    gene matching several reference genes fills each of them.

    Returns:
        `(aligned, overlap)`: a new AnnData with all cells and obs columns, `var_names == genes`;
        `overlap = {'n_reference_genes', 'n_shared', 'fraction'}`. Warns below 80 % overlap and
        raises `ScqueryError` below `inputs.min_overlap` or when no gene is shared.
    """
    source, min_overlap = source_of(adata), inputs.min_overlap
    genes = [str(g) for g in genes]
    sources, overlap = gene_sources(_gene_names(adata, inputs.gene_key), genes, source, min_overlap)
    X = _matrix(adata)
    aligned = to_csr32(X @ selection_matrix(sources, X.shape[1]))
    aligned.sort_indices()
    var = pd.DataFrame({"scquery_shared": sources >= 0}, index=pd.Index(genes))
    values = adata.uns.get("scquery", {}).get("values")
    result = _obs_result(adata, np.arange(adata.n_obs), aligned, var, values)
    return result, overlap


def gene_sources(names, genes, source, min_overlap=0.5):
    """`(sources, overlap)`: for each of `genes`, the index of its match among the data's gene
    `names` (-1: none), and the overlap (see `align_genes`, which warns and raises as this does)."""
    find = gene_lookup(names)
    sources = np.asarray([find(key) for key in match_keys(genes)], dtype=np.int64)
    found = np.flatnonzero(sources >= 0)
    overlap = {
        "n_reference_genes": len(genes),
        "n_shared": int(found.size),
        "fraction": float(found.size / len(genes)) if genes else 0.0,
    }
    percent = f"{100 * overlap['fraction']:.1f} %"
    if found.size == 0:
        raise ScqueryError(
            f"{source} shares no genes with the reference; check that both use the same gene "
            "naming (symbols or Ensembl IDs, see gene_key) and species."
        )
    if overlap["fraction"] < min_overlap:
        raise ScqueryError(
            f"{source} shares only {overlap['n_shared']} of {len(genes)} reference genes "
            f"({percent}, below min_overlap={min_overlap}); check the gene naming (gene_key) "
            "and species."
        )
    if overlap["fraction"] < 0.8:
        warnings.warn(
            f"{source} shares {overlap['n_shared']} of {len(genes)} reference genes ({percent}); "
            "the missing genes are set to zero.",
            stacklevel=3,
        )
    return sources, overlap


def selection_matrix(sources, n_genes):
    """The sparse genes × chosen genes matrix that `X @` it picks the `sources` columns of `X` with
    (zeros where a source is -1)."""
    found = np.flatnonzero(sources >= 0)
    return sp.csr_matrix(
        (np.ones(found.size, dtype=np.float32), (sources[found], found)), shape=(n_genes, len(sources))
    )


def reference_species(record):
    """The species of a preprocessing record's reference: recorded at training, or (records of older
    bundles) detected from its genes; None when they do not tell."""
    return record.get("species") or detect_species(record["genes"])


def _gene_map(gene_map, species, reference, names, source):
    """The `GeneMap` to use (None: the genes are aligned as they are), or the one sentence saying
    why not: a query whose gene names look like another species than the reference's, given
    neither option, is refused rather than matched by chance (case-insensitive names)."""
    if gene_map is not None and species is not None:
        raise ScqueryError("Give either species (the built-in orthologues) or gene_map (your own), not both.")
    if gene_map is not None:
        return read_gene_map(gene_map)
    if species is None:
        query = detect_species(names)
        if query is not None and reference is not None and query != reference:
            raise ScqueryError(
                f"{source} does not match the model's genes: {species_hint(query, reference)}."
            )
        return None
    if species not in SPECIES:
        raise ScqueryError(f"species={species!r} is not known; choose one of {', '.join(SPECIES)}.")
    if reference is None:
        raise ScqueryError(
            "The model's reference species is not recorded and its gene names look neither human nor "
            "mouse; give a gene map (--gene-map FILE, gene_map=) instead of the species."
        )
    return None if species == reference else builtin_map(species, reference)


def apply_preprocess(adata, record, inputs=InputOptions()):
    """Process a query like the reference of `record` (from `fit_preprocess`).

    The query's scale is recognized (`detect_values`; each dataset of a merged query on its own)
    and undone (`to_linear`); its cells are then normalized to the reference's `target_sum` on the
    query's own genes and log1p-transformed, so counts and every normalized or logged form of them
    give the same matrix. Centred or scaled values are refused (`ScqueryError`). A query of another
    species is mapped onto the reference's genes (`scquery.orthologs.map_genes`) through
    `inputs.gene_map` (a CSV/TSV path, DataFrame, dict or `GeneMap`: `scquery.orthologs.read_gene_map`)
    or, with `inputs.species` (the query's: 'human' or 'mouse'), the built-in orthologues; given
    neither, a query whose gene names look like another species than the reference's is refused
    with a hint (`inputs`: `scquery.options.InputOptions`). Then
    the genes are aligned to `record['genes']` (see `align_genes`). All cells and obs columns are
    kept; scaling, when recorded, is the model's first layer.

    Returns:
        `(query, overlap)` as in `align_genes`; `query.uns['scquery']` holds what `detect_values`
        found (`values`), the `species` of the query and the reference (as given or detected) and,
        when genes were mapped, `gene_map` (`map_genes`'s record with `overlap_before`: the overlap
        of the query's own gene names).
    """
    source, species = source_of(adata), inputs.species
    X, values = _to_log_normalized(adata, _matrix(adata), record["target_sum"])
    names = _gene_names(adata, inputs.gene_key)
    reference = reference_species(record)
    found = _gene_map(inputs.gene_map, species, reference, names, source)
    query = ad.AnnData(X, obs=adata.obs.copy(), var=adata.var.copy(), obsm=dict(adata.obsm.items()))
    mapping = None
    if found is not None:
        find = gene_lookup(names)
        before = sum(find(key) >= 0 for key in match_keys(record["genes"]))
        mapped, genes, mapping = map_genes(X, names, found, record["genes"])
        if not genes:
            raise ScqueryError(
                f"None of the genes of {source} maps onto the model's genes through {found.name}; check "
                "that the map's query_gene column names the query's genes (the built-in table holds gene "
                "symbols and human Ensembl IDs, not mouse ones)."
            )
        mapping["overlap_before"] = {
            "n_reference_genes": len(record["genes"]),
            "n_shared": int(before),
            "fraction": float(before / len(record["genes"])),
        }
        query = ad.AnnData(mapped, obs=query.obs, var=pd.DataFrame(index=pd.Index(genes)), obsm=query.obsm)
        inputs = dataclasses.replace(inputs, gene_key=None)
    query.uns["scquery"] = {"source": source, "values": values}
    aligned, overlap = align_genes(query, record["genes"], inputs)
    aligned.uns["scquery"]["species"] = {"query": species or detect_species(names), "reference": reference}
    if mapping is not None:
        aligned.uns["scquery"]["gene_map"] = mapping
    return aligned, overlap
