"""Preprocessing a reference, and processing a query exactly like it.

`fit_preprocess` filters, normalizes and selects genes on a reference and returns a plain,
JSON-serializable record of every parameter; `apply_preprocess` uses that record on a query.

Scaling stays sparse-friendly: z-scoring would make the whole matrix dense, so `scale=True` only
records the reference's gene means and standard deviations; `.X` stays sparse log1p values and
the model's first layer (`keras.layers.Normalization`, see `scquery.classifier`) standardizes each
mini-batch, so the saved model scales a query exactly like the reference.
"""

import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from .errors import ScqueryError
from .io import check_matrix, detect_values, to_csr32

__all__ = [
    "align_genes",
    "apply_preprocess",
    "detect_values",
    "fit_preprocess",
    "qc_cells",
]

RECORD_VERSION = 1
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*[GT]\d+)\.\d+$", re.IGNORECASE)


def _source(adata):
    return adata.uns.get("scquery", {}).get("source", "the data")


def _matrix(adata):
    """`adata.X` as a checked CSR float32 matrix (backed data is loaded into memory)."""
    X = adata.X
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        X = X[:]
    X = to_csr32(X)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ScqueryError(
            f"{_source(adata)} holds {X.shape[0]} cells and {X.shape[1]} genes; give data with "
            "at least one cell and one gene."
        )
    check_matrix(X, _source(adata))
    return X


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
    out.uns["scquery"] = {"source": _source(adata), "values": uns_values, "preprocessed": True}
    return out


def _qc_cells(adata, X, min_genes, max_pct_mito):
    """Indices of the cells of `adata` (values `X`) passing quality control (see `qc_cells`)."""
    keep_cells, _ = sc.pp.filter_cells(X, min_genes=min_genes, inplace=False)
    if max_pct_mito is not None:
        mito = np.asarray(adata.var_names.str.startswith(("MT-", "mt-")))
        if not mito.any():
            warnings.warn(f"{_source(adata)} has no mitochondrial genes (MT-/mt-).", stacklevel=3)
        qc, _ = sc.pp.calculate_qc_metrics(
            ad.AnnData(X, var=pd.DataFrame({"mt": mito}, index=adata.var_names.astype(str))),
            qc_vars=["mt"],
            percent_top=None,
            log1p=False,
            inplace=False,
        )
        keep_cells &= qc["pct_counts_mt"].to_numpy() <= max_pct_mito
    cells = np.flatnonzero(keep_cells)
    if cells.size == 0:
        raise ScqueryError(
            f"No cells of {_source(adata)} pass quality control (min_genes={min_genes}, "
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
):
    """Filter, normalize and select the genes of a reference; return the result and its record.

    Steps: keep cells with at least `min_genes` expressed genes and (when `max_pct_mito` is set) at
    most that percentage of their values in mitochondrial genes (names starting `MT-`/`mt-`);
    when the values are counts, `normalize_total(target_sum)` and `log1p` on all genes (values
    already log1p-normalized are not normalized again); keep genes expressed in at least
    `min_cells` kept cells; select the `n_top_genes` most variable (`highly_variable_genes`,
    flavor 'seurat'; all genes when there are no more) or, when given, exactly `genes` (missing
    ones zero-filled, `min_cells` not applied); with `scale`, record gene means and standard
    deviations (applied by the model's `Normalization` layer).

    Returns:
        `(result, record)`: `result.X` is CSR float32 of the selected genes in record order, obs
        holds every original column for the kept cells; `record` is a JSON-serializable dict.
    """
    source = _source(adata)
    X = _matrix(adata)
    values = detect_values(X)
    if values == "other":
        warnings.warn(
            f"The values of {source} are neither counts nor log1p-normalized; they are used as "
            "they are, without normalization.",
            stacklevel=2,
        )
    n_cells, n_genes = X.shape
    cells = _qc_cells(adata, X, min_genes, max_pct_mito)
    X = X[cells]
    if values == "counts":
        X = _log_normalize(X, target_sum)

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
        genes = [str(g) for g in genes]
        if len(set(genes)) != len(genes) or not genes:
            raise ScqueryError("The given gene list is empty or names a gene twice; give each gene once.")
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
        n = X.shape[0]
        std = np.sqrt(variance * n / max(n - 1, 1))
        std[std == 0] = 1.0
        scale_record = {"mean": mean.tolist(), "std": std.tolist()}

    record = {
        "version": RECORD_VERSION,
        "values": values,
        "normalized": values == "counts",
        "log1p": values != "other",
        "target_sum": float(target_sum),
        "gene_selection": selection,
        "n_top_genes": int(n_top_genes),
        "hvg_flavor": "seurat",
        "genes": genes,
        "scale": scale_record,
        "qc": qc_record,
        "n_cells": int(cells.size),
    }
    result = _obs_result(adata, cells, to_csr32(X), var, values)
    return result, record


def _match_keys(names):
    """Names with Ensembl version suffixes removed (`ENSG00000123.12` → `ENSG00000123`)."""
    return [_ENSEMBL_VERSION.sub(r"\1", str(name)) for name in names]


def align_genes(adata, genes, *, gene_key=None, min_overlap=0.5):
    """Reorder the genes of `adata` to `genes`, zero-filling the missing ones (sparse).

    Genes match exactly first, then case-insensitively; Ensembl version suffixes are ignored on
    both sides. `gene_key` names a `var` column to match on instead of `var_names`. A data gene
    matching several reference genes fills each of them.

    Returns:
        `(aligned, overlap)`: a new AnnData with all cells and obs columns, `var_names == genes`;
        `overlap = {'n_reference_genes', 'n_shared', 'fraction'}`. Warns below 80 % overlap and
        raises `ScqueryError` below `min_overlap` or when no gene is shared.
    """
    source = _source(adata)
    if gene_key is None:
        names = adata.var_names
    elif gene_key in adata.var:
        names = adata.var[gene_key]
    else:
        columns = ", ".join(map(str, adata.var.columns)) or "none"
        raise ScqueryError(
            f"The gene column {gene_key!r} is not in the var of {source} (columns: {columns}); "
            "choose one of them or leave out gene_key."
        )
    genes = [str(g) for g in genes]
    exact, folded = {}, {}
    for position, key in enumerate(_match_keys(names)):
        exact.setdefault(key, position)
        folded.setdefault(key.lower(), position)
    sources = []
    for key in _match_keys(genes):
        sources.append(exact.get(key, folded.get(key.lower(), -1)))
    sources = np.asarray(sources, dtype=np.int64)
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
            stacklevel=2,
        )
    X = _matrix(adata)
    selection = sp.csr_matrix(
        (np.ones(found.size, dtype=np.float32), (sources[found], found)),
        shape=(X.shape[1], len(genes)),
    )
    aligned = to_csr32(X @ selection)
    aligned.sort_indices()
    var = pd.DataFrame({"scquery_shared": sources >= 0}, index=pd.Index(genes))
    values = adata.uns.get("scquery", {}).get("values") or detect_values(X)
    result = _obs_result(adata, np.arange(adata.n_obs), aligned, var, values)
    return result, overlap


def apply_preprocess(adata, record, *, gene_key=None, min_overlap=0.5):
    """Process a query like the reference of `record` (from `fit_preprocess`).

    When the query holds counts and the reference was log1p-normalized, normalize on the query's
    own genes (`target_sum`, log1p); values already log1p-normalized are used as they are. Then
    align to `record['genes']` (see `align_genes`). All cells and obs columns are kept; scaling,
    when recorded, is the model's first layer.

    Returns:
        `(query, overlap)` as in `align_genes`.
    """
    source = _source(adata)
    X = _matrix(adata)
    values = detect_values(X)
    if values == "other":
        warnings.warn(
            f"The values of {source} are neither counts nor log1p-normalized, so they cannot be "
            "normalized like the reference; they are used as they are.",
            stacklevel=2,
        )
    elif values == "counts" and record["log1p"]:
        X = _log_normalize(X, record["target_sum"])
    query = ad.AnnData(X, obs=adata.obs.copy(), var=adata.var.copy(), obsm=dict(adata.obsm.items()))
    query.uns["scquery"] = {"source": source, "values": values}
    return align_genes(query, record["genes"], gene_key=gene_key, min_overlap=min_overlap)
