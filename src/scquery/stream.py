"""A reference read in blocks of rows, from disk (an h5ad opened with `backed='r'`) or from memory.

`fit_streamed` fits what `scquery.preprocess.fit_preprocess` fits (the same quality control,
normalization, gene choice and record) from statistics gathered in passes over blocks of rows:
per cell, whether its values are whole numbers or negative (so that the scale is recognized on
the same sampled cells), its expressed genes and mitochondrial share (quality control); per gene,
its expressing cells and its sums and sums of squares (gene filter, highly variable genes of
scanpy's 'seurat' flavor, the scaling record) and, given labels, per cell type (each type's
defining genes join the highly variable ones). Its processed rows (`ReferenceRows`) are then made on
demand: each batch of training reads its cells and normalizes them as the whole would be (every
step is row by row), so training holds a batch, not the matrix, and an in-memory AnnData gives the
same values, hence the same model.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .batches import CSRDataset, RowSource
from .batches import read_rows as _read_rows
from .errors import ScqueryError
from .io import DATASET_KEY, DATASET_KEY_TAKEN, dataset_name, read_h5ad
from .labels import labelled_cells
from .orthologs import detect_species
from .preprocess import (
    _assumed_total,
    _linear_values,
    gene_sources,
    given_genes,
    make_record,
    mito_genes,
    normalize_parts,
    passing_cells,
    qc_mask,
    sample_rows,
    scale_of,
    scale_of_genes,
    selection_matrix,
)
from .values import check_matrix, select_values, source_of, to_csr32

__all__ = ["ReferenceRows", "StreamedReference", "fit_streamed", "read_backed", "read_rows"]

#: A block of a pass holds at most this many rows, and this many stored values.
BLOCK_ROWS, BLOCK_VALUES = 16_384, 1 << 20
#: Bins of the mean expression of scanpy's 'seurat' flavor of highly variable genes.
HVG_BINS = 20


def read_rows(X, rows):
    """Rows of a CSR matrix or backed CSR dataset as CSR float32: a slice, or sorted indices
    (`scquery.batches.read_rows`)."""
    if isinstance(rows, slice):
        rows = np.arange(*rows.indices(X.shape[0]))
    return to_csr32(_read_rows(X, rows))


@dataclass
class StreamedReference:
    """A processed reference: `X` its rows (CSR in memory, or `ReferenceRows` read on demand),
    `obs` its kept cells' annotations."""

    X: object
    obs: pd.DataFrame

    @property
    def n_obs(self):
        return self.X.shape[0]

    @property
    def n_vars(self):
        return self.X.shape[1]


class ReferenceRows(RowSource):
    """The processed rows of a reference (log-normalized, on the chosen genes), made on demand
    from its values `X` (CSR or a backed CSR dataset): row i is the kept cell `cells[i]`."""

    def __init__(self, X, cells, datasets, parts, target_sum, sources, source):
        self.X, self.cells, self.datasets, self.parts = X, np.asarray(cells), datasets, parts
        self.target_sum, self.source = target_sum, source
        sources = np.asarray(sources)
        every_gene = len(sources) == X.shape[1] and np.array_equal(sources, np.arange(X.shape[1]))
        self.selection = None if every_gene else selection_matrix(sources, X.shape[1])
        self.shape = (len(self.cells), len(sources))

    @property
    def backed(self):
        return isinstance(self.X, CSRDataset)

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.shape[0]))
        raw = self.cells[np.asarray(rows)]
        order = np.argsort(raw, kind="stable")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once, when the reference was fitted
            block = self._normalized(raw[order])
        processed = block if self.selection is None else to_csr32(block @ self.selection)
        processed.sort_indices()
        return processed[np.argsort(order)] if np.any(np.diff(order) < 0) else processed

    def _normalized(self, raw):
        """The log-normalized values of the sorted raw rows `raw` (every gene)."""
        parts = _block_parts(self.datasets, raw, self.parts)
        return _normalize_block(read_rows(self.X, raw), parts, self.target_sum, self.source)

    def materialize(self, block_rows=BLOCK_ROWS):
        """All rows as one CSR float32 matrix (for data that fits in memory)."""
        blocks = [self[start : start + block_rows] for start in range(0, self.shape[0], block_rows)]
        if not blocks:
            return sp.csr_matrix(self.shape, dtype=np.float32)
        return to_csr32(sp.vstack(blocks, format="csr"))


def _block_parts(datasets, raw, parts):
    """`normalize_parts`'s parts for the raw rows `raw`: their positions per dataset."""
    if datasets is None:
        return {None: (np.arange(len(raw)), parts[None])}
    names = datasets[raw]
    found = {name: (np.flatnonzero(names == name), values) for name, values in parts.items()}
    return {name: part for name, part in found.items() if part[0].size}


def _normalize_block(block, parts, target_sum, source):
    if not parts:
        return block
    return normalize_parts(block, parts, target_sum, source)[0]


def _values(adata, layer, use_raw):
    """`(X, obs, names, source)`: the values to use (a backed `.X` stays on disk), the cells'
    annotations and the gene names (repeated ones made unique, as `select_values` does)."""
    X = adata.X if adata.isbacked and layer is None and not use_raw else None
    if not isinstance(X, CSRDataset):
        values = select_values(adata, layer=layer, use_raw=use_raw)
        return values.X, values.obs, values.var_names.astype(str), source_of(adata)
    names = pd.Index(adata.var_names.astype(str))
    if not names.is_unique:
        names = ad.utils.make_index_unique(names)
    return X, adata.obs.copy(), names, source_of(adata)


def _blocks(indptr):
    """Slices of rows of at most `BLOCK_ROWS` rows and (where rows allow) `BLOCK_VALUES` values."""
    n, start = len(indptr) - 1, 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + BLOCK_VALUES, side="right")) - 1
        stop = min(max(stop, start + 1), start + BLOCK_ROWS, n)
        yield slice(start, stop)
        start = stop


def _indptr(X):
    return np.asarray(X.group["indptr"][:] if isinstance(X, CSRDataset) else X.indptr, dtype=np.int64)


def _row_flags(block):
    """Per row of a CSR block: whether it holds a negative value, and one not a whole number."""
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    data = block.data
    negative = np.bincount(rows[data < 0], minlength=block.shape[0]) > 0
    fraction = np.bincount(rows[data != np.round(data)], minlength=block.shape[0]) > 0
    return negative, fraction


def _detect(X, rows, nnz, negative, fraction):
    """`detect_values` of the rows `rows` of `X` from the per-row flags (same answers: the same
    sampled cells)."""
    found = {"values": "counts", "log_base": None, "target_sum": None}
    if nnz[rows].sum() == 0:
        return found
    if negative[rows].any():
        return {**found, "values": "scaled"}
    if not fraction[rows].any():
        return found
    return scale_of(read_rows(X, rows[sample_rows(nnz[rows])]))


def fit_streamed(
    adata,
    *,
    layer=None,
    use_raw=False,
    min_genes=200,
    min_cells=3,
    max_pct_mito=None,
    target_sum=1e4,
    n_top_genes=2000,
    genes=None,
    scale=False,
    species=None,
    labels=None,
    marker_genes=0,
):
    """`fit_preprocess`'s preprocessing of `adata` (in memory, or backed: its `.X` is read in blocks
    and never whole) from passes over blocks of rows. Returns `(reference, record)`:
    `reference.X` is a `ReferenceRows` of the kept cells, `reference.obs` their annotations, and
    `record` what `fit_preprocess` records. Given `labels` (one per cell of `adata`, missing for an
    unlabelled cell), the highly variable genes are joined by each type's `marker_genes` defining
    genes (`defining_genes`), recorded under `record['marker_genes']`."""
    X, obs, names, source = _values(adata, layer, use_raw)
    n_cells, n_genes = X.shape
    if n_cells == 0 or n_genes == 0:
        raise ScqueryError(
            f"{source} holds {n_cells} cells and {n_genes} genes; give data with at least one cell and "
            "one gene."
        )
    indptr = _indptr(X)
    nnz = np.diff(indptr)
    negative, fraction = np.zeros(n_cells, bool), np.zeros(n_cells, bool)
    for rows in _blocks(indptr):
        block = read_rows(X, rows)
        check_matrix(block, source)
        negative[rows], fraction[rows] = _row_flags(block)

    datasets = obs["dataset"].astype(str).to_numpy() if "dataset" in obs else None
    if datasets is None or len(set(datasets)) < 2:
        datasets, groups = None, {None: np.arange(n_cells)}
    else:
        groups = {name: np.flatnonzero(datasets == name) for name in pd.unique(datasets)}
    parts = {name: _detect(X, rows, nnz, negative, fraction) for name, rows in groups.items()}
    _assume_totals(X, indptr, datasets, parts)

    mito = mito_genes(names, source, max_pct_mito)
    keep = np.zeros(n_cells, bool)
    expressing = np.zeros(n_genes, np.int64)
    sums = {key: np.zeros(n_genes) for key in ("linear", "linear2", "log", "log2")}
    types = _TypeSums(labels, n_genes) if labels is not None and marker_genes else None
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for rows in _blocks(indptr):
            raw = np.arange(rows.start, rows.stop)
            block_parts = _block_parts(datasets, raw, parts)
            block = _normalize_block(read_rows(X, rows), block_parts, target_sum, source)
            linear = block.copy()
            linear.data = np.expm1(linear.data)
            keep[rows] = qc_mask(linear, mito, min_genes, max_pct_mito)
            kept = np.flatnonzero(keep[rows])
            kept_block = block[kept]
            _add_gene_sums(sums, expressing, kept_block, linear[kept])
            if types is not None:
                types.add(kept_block, rows.start + kept)
    for message in dict.fromkeys(str(w.message) for w in said):
        warnings.warn(message, UserWarning, stacklevel=2)
    cells = passing_cells(keep, source, min_genes, max_pct_mito)

    n = cells.size
    marker_record = None
    if genes is not None:
        genes = given_genes(genes)
        sources, _ = gene_sources(names, genes, source)
        selection = "given"
    else:
        expressed = sources = np.flatnonzero(expressing >= min_cells)
        if not sources.size:
            raise ScqueryError(
                f"No genes of {source} are expressed in {min_cells} or more cells after quality "
                "control; lower min_cells."
            )
        selection = "all"
        if n_top_genes < sources.size:
            mean, variance = _mean_variance(sums["linear"], sums["linear2"], n)
            sample_variance = variance[sources] * n / max(n - 1, 1)
            sources = sources[seurat_highly_variable(mean[sources], sample_variance, n_top_genes)]
            selection = "highly_variable"
        if types is not None:
            defining = types.defining_genes(expressed, marker_genes)
            sources = np.unique(np.concatenate([sources, *defining.values()]))
            marker_record = {name: list(names[rows]) for name, rows in defining.items()}
        genes = list(names[sources])
    scale_record = None
    if scale:
        mean, variance = _mean_variance(sums["log"], sums["log2"], n)
        found = sources >= 0
        scale_record = scale_of_genes(
            np.where(found, mean[sources], 0.0), np.where(found, variance[sources], 0.0), n
        )
    qc_record = {
        "min_genes": int(min_genes),
        "min_cells": int(min_cells),
        "max_pct_mito": None if max_pct_mito is None else float(max_pct_mito),
        "n_cells_before": int(n_cells),
        "n_cells_after": int(n),
        "n_genes_before": int(n_genes),
        "n_genes_after": len(genes),
    }
    values = parts[None] if list(parts) == [None] else parts
    record = make_record(values, target_sum, selection, n_top_genes, genes, species, scale_record, qc_record)
    record["species"] = species or detect_species(names)
    if marker_record is not None:
        record["marker_genes"] = marker_record
    rows = ReferenceRows(X, cells, datasets, parts, target_sum, sources, source)
    return StreamedReference(rows, obs.iloc[cells]), record


def _assume_totals(X, indptr, datasets, parts):
    """For data normalized over genes it no longer holds, the total `_normalized` takes over the
    whole data (the smallest usual one above every cell's sum), found in one more pass."""
    open_parts = {
        name: values
        for name, values in parts.items()
        if values["values"] == "normalized" and not values["target_sum"]
    }
    if not open_parts:
        return
    top = dict.fromkeys(open_parts, 0.0)
    for rows in _blocks(indptr):
        block = read_rows(X, rows)
        raw = np.arange(rows.start, rows.stop)
        for name, (positions, values) in _block_parts(datasets, raw, open_parts).items():
            part = block[positions]
            linear = _linear_values(part.data, values["log_base"])
            linear = to_csr32(sp.csr_matrix((linear, part.indices, part.indptr), part.shape))
            top[name] = max(top[name], _assumed_total(linear))
    for name, values in open_parts.items():
        values["assumed_target_sum"] = top[name]


def _add_gene_sums(sums, expressing, log_values, linear):
    """Add a block's kept rows to the per-gene counts of expressing cells and sums (of the linear
    and log values and of their squares)."""
    n_genes = len(expressing)
    expressing += np.bincount(linear.indices[linear.data > 0], minlength=n_genes)
    for key, matrix in (("linear", linear), ("log", log_values)):
        data = matrix.data.astype(np.float64)
        sums[key] += np.bincount(matrix.indices, weights=data, minlength=n_genes)
        sums[key + "2"] += np.bincount(matrix.indices, weights=data * data, minlength=n_genes)


class _TypeSums:
    """Per cell type, the number of kept cells and the per-gene sums (and sums of squares) of
    their log-normalized values, gathered block by block."""

    def __init__(self, labels, n_genes):
        labels = pd.Categorical(labels)  # no string per cell: a categorical column keeps its codes
        named = labelled_cells(pd.Series(labels.categories, dtype=object))  # blank names: unlabelled
        self.names = [str(name) for name in labels.categories[named]]
        recode = np.full(len(named) + 1, -1)
        recode[:-1][named] = np.arange(len(self.names))
        self.codes = recode[labels.codes]  # code -1 (missing) reads the last entry, -1
        self.n = np.zeros(len(self.names))
        self.sums = np.zeros((len(self.names), n_genes))
        self.squares = np.zeros((len(self.names), n_genes))

    def add(self, log_values, cells):
        codes = self.codes[cells]
        labelled = np.flatnonzero(codes >= 0)
        member = sp.csr_matrix(
            (np.ones(labelled.size, np.float32), (codes[labelled], labelled)),
            shape=(len(self.names), len(cells)),
        )
        self.n += np.bincount(codes[labelled], minlength=len(self.names))
        self.sums += (member @ log_values).toarray()
        self.squares += (member @ log_values.power(2)).toarray()

    def defining_genes(self, candidates, n_genes):
        """Per type of two or more cells, its `n_genes` defining genes among the `candidates`: the
        genes it raises most against all other labelled cells (Welch's t of the log-normalized
        values, as scanpy's `rank_genes_groups(method='t-test')`), raised by a quarter or more."""
        total_n, total, total_sq = self.n.sum(), self.sums.sum(axis=0), self.squares.sum(axis=0)
        chosen = {}
        for row, name in enumerate(self.names):
            n_in, n_out = self.n[row], total_n - self.n[row]
            if n_in < 2 or n_out < 2:
                continue
            mean_in, var_in = _sample_mean_variance(self.sums[row], self.squares[row], n_in)
            mean_out, var_out = _sample_mean_variance(
                total - self.sums[row], total_sq - self.squares[row], n_out
            )
            raised = (mean_in - mean_out)[candidates]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = raised / np.sqrt(var_in[candidates] / n_in + var_out[candidates] / n_out)
            t = np.where((raised > np.log(1.25)) & np.isfinite(t), t, -np.inf)
            top = np.argsort(-t, kind="stable")[:n_genes]
            chosen[name] = candidates[top[np.isfinite(t[top])]]
        return chosen


def _sample_mean_variance(total, squares, n):
    mean, variance = _mean_variance(total, squares, n)
    return mean, variance * n / (n - 1)


def _mean_variance(total, squares, n):
    """Per-gene mean and population variance from sums over `n` cells."""
    mean = total / n
    return mean, np.maximum(squares / n - mean * mean, 0.0)


def seurat_highly_variable(mean, variance, n_top_genes, n_bins=HVG_BINS):
    """The mask of the `n_top_genes` most variable genes by scanpy's 'seurat' flavor, from each
    gene's mean and (sample) variance of the normalized values (not their log): the log dispersion,
    normalized within `n_bins` bins of the log mean; a bin of one gene gets normalized dispersion 1."""
    mean = np.array(mean, dtype=np.float64)
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = variance / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    frame = pd.DataFrame({"means": np.log1p(mean), "dispersions": dispersion})
    frame["bin"] = pd.cut(frame["means"], bins=n_bins)
    stats = frame.groupby("bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    stats = stats.loc[frame["bin"]]
    norm = (frame["dispersions"].to_numpy() - stats["avg"].to_numpy()) / stats["dev"].to_numpy()
    ranked = np.sort(norm[~np.isnan(norm)])[::-1]
    cut = ranked[min(n_top_genes, ranked.size) - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cut


def read_backed(path):
    """An h5ad file opened with `backed='r'` (its `.X` stays on disk), as `scquery.io.read_many`
    gives one file otherwise (`uns['scquery']['source']`, the file's name in `obs['dataset']`);
    None where its `.X` is not a sparse CSR matrix or it cannot be opened so (`read_many` then
    reads it, or says what is wrong)."""
    path = Path(path)
    if path.suffix != ".h5ad" or not path.is_file():
        return None
    try:
        adata = read_h5ad(path, backed="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(adata.X, CSRDataset):
        adata.file.close()
        return None
    key = DATASET_KEY_TAKEN if DATASET_KEY in adata.obs else DATASET_KEY
    adata.obs[key] = pd.Categorical([dataset_name(path)] * adata.n_obs)
    adata.uns["scquery"] = {**dict(adata.uns.get("scquery", {})), "source": str(path), "added_column": key}
    return adata
