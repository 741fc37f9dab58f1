"""The preprocessing of a reference, fitted once, in passes over blocks of rows, from disk (an h5ad
opened with `backed='r'`) or from memory alike (`fit_reference`).

Steps: quality control of the cells (expressed genes, mitochondrial share), normalization (each
dataset's scale recognized and undone, `scquery.preprocessing.scales`), the choice of genes (expressed
in enough cells; the most variable, scanpy's 'seurat' flavor; given labels, each type's defining genes
join them; or the genes given) and, with `scale`, the genes' means and standard deviations. Each is
computed from statistics gathered block by block: per cell, whether its values are whole numbers or
negative (so that the scale is recognized on the same sampled cells as on the whole), its expressed
genes and mitochondrial share; per gene, its expressing cells and its sums and sums of squares; given
labels, the same per cell type. The result is a plain, JSON-serializable record of every parameter
and the processed rows, made on demand (`scquery.preprocessing.rows.ReferenceRows`).
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from ..errors import ScqueryError
from ..labels import labelled_cells
from ..options import InputOptions
from ..orthologs import SPECIES, detect_species
from ..values import CSRDataset, check_matrix
from .align import gene_sources
from .rows import BLOCK_ROWS, BLOCK_VALUES, ReferenceRows, block_parts, normalized_block, raw_rows
from .scales import assumed_total, cell_datasets, decide, linear_values, row_flags

__all__ = ["fit_reference", "qc_cells", "seurat_highly_variable"]

RECORD_VERSION = 1
#: Bins of the mean expression of scanpy's 'seurat' flavor of highly variable genes.
HVG_BINS = 20


def fit_reference(cells, config, *, species=None, labels=None):
    """Filter, normalize and choose the genes of the reference `cells` (`scquery.values.Cells`; a
    backed `.X` is read in blocks and never whole) with the options of `config` (a
    `scquery.config.TrainConfig`); return its processed rows, the kept cells and the record.

    Keeps cells with at least `min_genes` expressed genes and (when `max_pct_mito` is set) at most
    that percentage of their values in mitochondrial genes (names starting `MT-`/`mt-`); brings the
    values to a linear scale (`detect_values`, `to_linear`; centred or scaled values are refused,
    each dataset of a merged reference is recognized on its own), `normalize_total(target_sum)` and
    `log1p` on all genes; keeps genes expressed in at least `min_cells` kept cells; selects the
    `n_top_genes` most variable (flavor 'seurat'; all genes when there are no more) or, when given,
    exactly `genes` (missing ones zero-filled, `min_cells` not applied). Given `labels` (one per
    cell, missing for an unlabelled cell), the highly variable genes are joined by each type's
    `marker_genes` defining genes (recorded under `record['marker_genes']`). With `scale`, the
    genes' means and standard deviations are recorded (applied by the model's `Normalization`
    layer). `species` ('human', 'mouse' or None: detected from the gene names,
    `scquery.orthologs.detect_species`) is recorded for queries of another species.

    Returns:
        `(X, kept, record)`: the processed values of the kept cells (CSR float32 where `cells` are in
        memory; a `ReferenceRows`, whose rows are made on demand, where they are on disk), the kept
        cells' positions in `cells`, and a JSON-serializable dict (`record['values']`: what
        `detect_values` found).
    """
    if species is not None and species not in SPECIES:
        raise ScqueryError(
            f"species={species!r} is not known; choose one of {', '.join(SPECIES)} or leave it out."
        )
    X, names, source = cells.X, cells.genes.astype(str), cells.source
    n_cells, n_genes = X.shape
    indptr = np.asarray(X.group["indptr"][:] if isinstance(X, CSRDataset) else X.indptr, dtype=np.int64)
    nnz = np.diff(indptr)
    datasets = cell_datasets(cells.obs)
    groups = {None: np.arange(n_cells)} if datasets is None else _groups(datasets)
    parts = _recognize(X, indptr, nnz, groups, source)
    _assume_totals(X, indptr, datasets, parts)

    keep, sums, types = _pass(X, indptr, datasets, parts, names, config, labels, source)
    kept = _passing_cells(keep, source, config.min_genes, config.max_pct_mito)
    sources, genes, selection, marker_record = _choose_genes(sums, types, kept.size, names, config, source)
    scale_record = None
    if config.scale:
        mean, variance = _mean_variance(sums["log"], sums["log2"], kept.size)
        found = sources >= 0
        scale_record = _scale_of_genes(
            np.where(found, mean[sources], 0.0), np.where(found, variance[sources], 0.0), kept.size
        )
    record = {
        "version": RECORD_VERSION,
        "values": parts[None] if list(parts) == [None] else parts,
        "normalized": True,
        "log1p": True,
        "target_sum": float(config.target_sum),
        "gene_selection": selection,
        "n_top_genes": int(config.n_top_genes),
        "hvg_flavor": "seurat",
        "genes": genes,
        "species": species,
        "scale": scale_record,
        "qc": {
            "min_genes": int(config.min_genes),
            "min_cells": int(config.min_cells),
            "max_pct_mito": None if config.max_pct_mito is None else float(config.max_pct_mito),
            "n_cells_before": int(n_cells),
            "n_cells_after": int(kept.size),
            "n_genes_before": int(n_genes),
            "n_genes_after": len(genes),
        },
        "n_cells": int(kept.size),
    }
    if marker_record is not None:
        record["marker_genes"] = marker_record
    rows = ReferenceRows(X, kept, datasets, parts, config.target_sum, sources, source)
    processed = rows if isinstance(X, CSRDataset) else rows.materialize()
    record["species"] = species or detect_species(names)
    return processed, kept, record


def _groups(datasets):
    return {name: np.flatnonzero(datasets == name) for name in pd.unique(datasets)}


def _blocks(indptr):
    """Slices of rows of at most `BLOCK_ROWS` rows and (where rows allow) `BLOCK_VALUES` values."""
    n, start = len(indptr) - 1, 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + BLOCK_VALUES, side="right")) - 1
        stop = min(max(stop, start + 1), start + BLOCK_ROWS, n)
        yield slice(start, stop)
        start = stop


def _recognize(X, indptr, nnz, groups, source):
    """What each dataset's values are (`scales.decide`), from per-row flags gathered block by block
    (checked block by block where the values are on disk; `select_values` checked them in memory)."""
    negative, fraction = np.zeros(len(nnz), bool), np.zeros(len(nnz), bool)
    for rows in _blocks(indptr):
        block = raw_rows(X, rows)
        if isinstance(X, CSRDataset):
            check_matrix(block, source)
        negative[rows], fraction[rows] = row_flags(block)
    return {
        name: decide(
            nnz[rows], negative[rows], fraction[rows], lambda sample, rows=rows: raw_rows(X, rows[sample])
        )
        for name, rows in groups.items()
    }


def _pass(X, indptr, datasets, parts, names, config, labels, source):
    """One pass over the normalized blocks: which cells pass quality control, the per-gene sums of
    the kept cells (`_add_gene_sums`) and, given labels, the per-type sums (`_TypeSums`)."""
    mito = _mito_genes(names, source, config.max_pct_mito)
    n_genes = len(names)
    keep = np.zeros(X.shape[0], bool)
    sums = {key: np.zeros(n_genes) for key in ("linear", "linear2", "log", "log2")}
    sums["expressing"] = np.zeros(n_genes, np.int64)
    types = _TypeSums(labels, n_genes) if labels is not None and config.marker_genes else None
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for rows in _blocks(indptr):
            block = normalized_block(X, rows, datasets, parts, config.target_sum, source)
            linear = block.copy()
            linear.data = np.expm1(linear.data)
            keep[rows] = _qc_mask(linear, mito, config.min_genes, config.max_pct_mito)
            kept = np.flatnonzero(keep[rows])
            kept_block = block[kept]
            _add_gene_sums(sums, kept_block, linear[kept])
            if types is not None:
                types.add(kept_block, rows.start + kept)
    for message in dict.fromkeys(str(w.message) for w in said):
        warnings.warn(message, UserWarning, stacklevel=3)
    return keep, sums, types


def _choose_genes(sums, types, n, names, config, source):
    """`(sources, genes, selection, marker_record)`: the chosen genes' columns (-1: a given gene the
    data lacks) and names, how they were chosen, and each type's defining genes (None without
    labels)."""
    if config.genes is not None:
        genes = _given_genes(config.genes)
        sources, _ = gene_sources(names, genes, source, InputOptions().min_overlap)
        return sources, genes, "given", None
    expressed = sources = np.flatnonzero(sums["expressing"] >= config.min_cells)
    if not sources.size:
        raise ScqueryError(
            f"No genes of {source} are expressed in {config.min_cells} or more cells after quality "
            "control; lower min_cells."
        )
    selection, marker_record = "all", None
    if config.n_top_genes < sources.size:
        mean, variance = _mean_variance(sums["linear"], sums["linear2"], n)
        sample_variance = variance[sources] * n / max(n - 1, 1)
        sources = sources[seurat_highly_variable(mean[sources], sample_variance, config.n_top_genes)]
        selection = "highly_variable"
    if types is not None:
        defining = types.defining_genes(expressed, config.marker_genes)
        sources = np.unique(np.concatenate([sources, *defining.values()]))
        marker_record = {name: list(names[rows]) for name, rows in defining.items()}
    return sources, list(names[sources]), selection, marker_record


def _assume_totals(X, indptr, datasets, parts):
    """For data normalized over genes it no longer holds, the total `scales` takes over the whole
    data (the smallest usual one above every cell's sum), found in one more pass."""
    open_parts = {
        name: values
        for name, values in parts.items()
        if values["values"] == "normalized" and not values["target_sum"]
    }
    if not open_parts:
        return
    top = dict.fromkeys(open_parts, 0.0)
    for rows in _blocks(indptr):
        block = raw_rows(X, rows)
        raw = np.arange(rows.start, rows.stop)
        for name, (positions, values) in block_parts(datasets, raw, open_parts).items():
            part = block[positions]
            linear = linear_values(part.data, values["log_base"]).astype(np.float32)
            linear = sp.csr_matrix((linear, part.indices, part.indptr), part.shape)
            top[name] = max(top[name], assumed_total(linear))
    for name, values in open_parts.items():
        values["assumed_target_sum"] = top[name]


def qc_cells(cells, config):
    """The positions of the cells of `cells` (`scquery.values.Cells`, in memory) with at least
    `config.min_genes` expressed genes and (when `config.max_pct_mito` is set) at most that
    percentage of their values in mitochondrial genes (names starting `MT-`/`mt-`), on the values as
    they are. No cell passing is an error."""
    mito = _mito_genes(cells.genes, cells.source, config.max_pct_mito)
    keep = _qc_mask(cells.X, mito, config.min_genes, config.max_pct_mito)
    return _passing_cells(keep, cells.source, config.min_genes, config.max_pct_mito)


def _mito_genes(names, source, max_pct_mito):
    """The mask of mitochondrial genes (`MT-`/`mt-`) among `names` where `max_pct_mito` asks for
    them (a warning when there are none), else None."""
    if max_pct_mito is None:
        return None
    mito = np.asarray(pd.Index(names).astype(str).str.startswith(("MT-", "mt-")))
    if not mito.any():
        warnings.warn(f"{source} has no mitochondrial genes (MT-/mt-).", stacklevel=4)
    return mito


def _qc_mask(X, mito, min_genes, max_pct_mito):
    """Which rows of `X` (linear values) pass quality control (`mito`: `_mito_genes`), row by row:
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


def _passing_cells(keep_cells, source, min_genes, max_pct_mito):
    """The indices of the cells kept (`keep_cells`, a mask); none is an error."""
    cells = np.flatnonzero(keep_cells)
    if cells.size == 0:
        raise ScqueryError(
            f"No cells of {source} pass quality control (min_genes={min_genes}, "
            f"max_pct_mito={max_pct_mito}); lower min_genes or raise max_pct_mito."
        )
    return cells


def _given_genes(genes):
    """The `genes` option as a list of names, each given once."""
    genes = [str(g) for g in genes]
    if len(set(genes)) != len(genes) or not genes:
        raise ScqueryError("The given gene list is empty or names a gene twice; give each gene once.")
    return genes


def _scale_of_genes(mean, variance, n):
    """The `scale` record of genes of these means and (population) variances over `n` cells: the
    sample standard deviation, 1 where it is 0."""
    std = np.sqrt(np.asarray(variance) * n / max(n - 1, 1))
    std[std == 0] = 1.0
    return {"mean": np.asarray(mean).tolist(), "std": std.tolist()}


def _add_gene_sums(sums, log_values, linear):
    """Add a block's kept rows to the per-gene counts of expressing cells and sums (of the linear
    and log values and of their squares)."""
    n_genes = len(sums["expressing"])
    sums["expressing"] += np.bincount(linear.indices[linear.data > 0], minlength=n_genes)
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
