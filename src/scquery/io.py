"""Reading expression files into AnnData, merging them, checking labels and writing safely.

Supported inputs: `.h5ad`; `.h5` (10x Cell Ranger HDF5); `.loom`; `.csv` / `.tsv` / `.txt`
(optionally `.gz`, cells × genes, first column the cell names, first row the gene names); and
10x Matrix Market folders (Cell Ranger v2: `matrix.mtx`, `genes.tsv`, `barcodes.tsv`; v3:
`matrix.mtx.gz`, `features.tsv.gz`, `barcodes.tsv.gz`).

After reading, `.X` holds the chosen values as CSR float32, duplicate gene names are made unique
(`AnnData.var_names_make_unique`: the second `TP53` becomes `TP53-1`, …), duplicate cell names
likewise, and `uns['scquery']` records the file (`source`) and what the values are (`values`, see
`scquery.preprocess.detect_values`).
"""

import os
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from .errors import ScqueryError

SUPPORTED = ".h5ad, .h5 (10x), .loom, .csv, .tsv, .txt (optionally .gz) or a 10x matrix folder"
_TEXT = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_TENX_V2 = ("matrix.mtx", "genes.tsv", "barcodes.tsv")
_TENX_V3 = ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")


def _suffix(path):
    """The format suffix of `path`, ignoring a trailing `.gz`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def dataset_name(path):
    """The name of a dataset in `obs['dataset']`: the file name without format suffixes."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return name
    for _ in range(2):
        stem, ext = os.path.splitext(name)
        if ext.lower() in {".gz", ".h5ad", ".h5", ".loom", *_TEXT}:
            name = stem
    return name


def _read_10x_folder(path):
    if (path / "genes.tsv").is_file():
        needed = _TENX_V2
    elif (path / "features.tsv.gz").is_file():
        needed = _TENX_V3
    else:
        raise ScqueryError(
            f"The folder {path} holds neither genes.tsv (10x v2) nor features.tsv.gz (10x v3); "
            f"give a 10x matrix folder or a file in one of the formats {SUPPORTED}."
        )
    for name in needed:
        if not (path / name).is_file():
            raise ScqueryError(
                f"The 10x folder {path} has no {name}; add it (a complete folder holds {', '.join(needed)})."
            )
    return sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=True)


def _read_text(path, sep, genes_by_cells):
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, index_col=0, dtype=str)
    table = pd.read_csv(path, sep=sep, index_col=0)
    table.columns = header.columns if header.empty else header.iloc[0].to_numpy()
    try:
        values = table.to_numpy(dtype=np.float32)
    except ValueError:
        raise ScqueryError(
            f"The table {path} holds non-numeric values; give a numeric matrix with cell or gene "
            "names in the first column and the first row only."
        ) from None
    names_rows = ad.utils.make_index_unique(pd.Index(table.index.astype(str)))
    names_cols = ad.utils.make_index_unique(pd.Index(table.columns.astype(str)))
    if genes_by_cells:
        values, names_rows, names_cols = values.T, names_cols, names_rows
    return ad.AnnData(
        sp.csr_matrix(values),
        obs=pd.DataFrame(index=names_rows),
        var=pd.DataFrame(index=names_cols),
    )


def _read_loom(path):
    with h5py.File(path, "r") as f:
        rows = set(f.get("row_attrs", {}).keys())
        cols = set(f.get("col_attrs", {}).keys())
    var_names = next((k for k in ("Gene", "var_names", "gene_names") if k in rows), "Gene")
    obs_names = next((k for k in ("CellID", "obs_names", "cell_names") if k in cols), "CellID")
    return ad.io.read_loom(path, sparse=True, obs_names=obs_names, var_names=var_names)


def _read_any(path, genes_by_cells):
    if path.is_dir():
        return _read_10x_folder(path)
    suffix = _suffix(path)
    if suffix == ".h5ad":
        return ad.read_h5ad(path)
    if suffix == ".h5":
        return sc.read_10x_h5(path)
    if suffix == ".loom":
        return _read_loom(path)
    if suffix in _TEXT:
        return _read_text(path, _TEXT[suffix], genes_by_cells)
    raise ScqueryError(
        f"The file {path} has an unknown format ({suffix or 'no extension'}); give one of {SUPPORTED}."
    )


def to_csr32(X):
    """`X` as a CSR float32 matrix (no copy when it already is one)."""
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32)
    return sp.csr_matrix(np.asarray(X, dtype=np.float32))


def detect_values(X, *, max_log=20.0, tolerance=0.05):
    """What a cells × genes matrix holds: `'counts'`, `'log1p_normalized'` or `'other'`.

    `'counts'`: non-negative integers. `'log1p_normalized'`: non-negative, not all integers, and
    either the largest value is below `max_log` (log scale) or the rows of `expm1(X)` sum to
    nearly the same total (relative spread below `tolerance`). `'other'`: anything else, e.g.
    negative (scaled) values.
    """
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if values.size == 0:
        return "counts"
    if values.min() < 0 or not np.isfinite(values).all():
        return "other"
    if np.array_equal(values, np.round(values)):
        return "counts"
    if values.max() < max_log:
        return "log1p_normalized"
    with np.errstate(over="ignore", invalid="ignore"):
        if sp.issparse(X):
            totals = sp.csr_matrix(X, dtype=np.float64).expm1().sum(axis=1)
        else:
            totals = np.expm1(np.asarray(X, dtype=np.float64)).sum(axis=1)
    totals = np.asarray(totals).ravel()
    totals = totals[totals > 0]
    if totals.size and np.isfinite(totals).all() and np.std(totals) <= tolerance * np.mean(totals):
        return "log1p_normalized"
    return "other"


def check_matrix(X, source, *, counts=False):
    """Raise `ScqueryError` when the CSR matrix `X` holds NaN or infinite values, or negative values
    where `counts` are expected."""
    if not np.isfinite(X.data).all():
        raise ScqueryError(
            f"The expression values of {source} contain NaN or infinite values; remove or "
            "replace them before use."
        )
    if counts and X.nnz and X.data.min() < 0:
        raise ScqueryError(
            f"The counts of {source} contain negative values; give raw counts (non-negative) "
            "or choose another layer."
        )


def read(path, *, layer=None, use_raw=False, genes_by_cells=False):
    """Read one expression file (see the module docstring for formats) into an AnnData.

    Args:
        path: a file or a 10x matrix folder.
        layer: move `layers[layer]` into `.X` (e.g. `'counts'`).
        use_raw: move `.raw` (values and genes) into `.X`.
        genes_by_cells: for text tables whose rows are genes and columns cells.

    Returns:
        A new AnnData whose `.X` is CSR float32; other fields of the file are kept.
    """
    path = Path(path)
    if layer is not None and use_raw:
        raise ScqueryError(f"Choose either layer={layer!r} or use_raw for {path}, not both.")
    if not path.exists():
        raise ScqueryError(f"The input {path} does not exist; check the path.")
    if path.is_file() and path.stat().st_size == 0:
        raise ScqueryError(f"The file {path} is empty; give a file with expression values.")
    try:
        adata = _read_any(path, genes_by_cells)
    except ScqueryError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ScqueryError(
            f"The file {path} could not be read as {_suffix(path) or '10x folder'} ({err}); "
            f"check that it is a valid file in one of the formats {SUPPORTED}."
        ) from err
    if use_raw:
        if adata.raw is None:
            raise ScqueryError(f"The file {path} has no .raw; read it without use_raw.")
        adata = adata.raw.to_adata()
    elif layer is not None:
        if layer not in adata.layers:
            available = ", ".join(adata.layers.keys()) or "none"
            raise ScqueryError(
                f"The file {path} has no layer {layer!r} (layers: {available}); choose one of "
                "them or leave out the layer."
            )
        adata.X = adata.layers[layer]
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ScqueryError(
            f"The file {path} holds {adata.n_obs} cells and {adata.n_vars} genes; give a file "
            "with at least one cell and one gene."
        )
    adata.X = to_csr32(adata.X)
    check_matrix(adata.X, path, counts=layer is not None and "count" in layer.lower())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        adata.var_names_make_unique()
        adata.obs_names_make_unique()
    adata.uns["scquery"] = {
        **dict(adata.uns.get("scquery", {})),
        "source": str(path),
        "values": detect_values(adata.X),
    }
    return adata


def read_many(paths, *, layer=None, use_raw=False, genes_by_cells=False):
    """Read several files (as `read`) and merge them into one AnnData.

    `obs['dataset']` names each cell's source (the file name without suffixes, made unique with
    `-1`, `-2`, …); duplicate cell names are made unique. The genes are the union of all files
    (`anndata.concat(join='outer', fill_value=0)`): a gene missing from one file is zero in its
    cells, so no gene is lost and `.X` stays sparse. Files whose values are of different kinds
    (counts and normalized values) cannot be merged.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ScqueryError("No input files were given; give at least one.")
    adatas = [read(p, layer=layer, use_raw=use_raw, genes_by_cells=genes_by_cells) for p in paths]
    names = list(ad.utils.make_index_unique(pd.Index([dataset_name(p) for p in paths])))
    kinds = {a.uns["scquery"]["values"] for a in adatas}
    if len(kinds) > 1:
        found = ", ".join(f"{n}: {a.uns['scquery']['values']}" for n, a in zip(names, adatas, strict=True))
        raise ScqueryError(
            f"The inputs hold different kinds of values ({found}); read them all as counts "
            "(e.g. layer='counts') or all as normalized values."
        )
    if len(adatas) == 1:
        merged = adatas[0]
        merged.obs["dataset"] = pd.Categorical([names[0]] * merged.n_obs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            merged = ad.concat(adatas, join="outer", fill_value=0, label="dataset", keys=names, merge="same")
            merged.obs_names_make_unique()
        merged.X = to_csr32(merged.X)
    merged.uns["scquery"] = {"source": ", ".join(map(str, paths)), "values": kinds.pop()}
    return merged


def labelled_cells(labels):
    """Boolean mask of the cells that have a label: not NaN/None and not empty (or blank) text."""
    labels = pd.Series(labels)
    text = labels.astype(object).where(labels.notna(), "").astype(str).str.strip()
    return (labels.notna() & (text != "")).to_numpy()


def check_labels(adata, key, source="the data", *, allow_missing=False):
    """Raise `ScqueryError` unless `obs[key]` exists and labels two classes or more; return the
    mask of labelled cells (`labelled_cells`).

    Cells without a label (NaN or empty) are an error, unless `allow_missing` (unlabelled cells
    of a training reference are used for pretraining only); even then some cells must be
    labelled. `source` names the file in the message.
    """
    if key not in adata.obs:
        columns = ", ".join(map(str, adata.obs.columns)) or "none"
        raise ScqueryError(
            f"The label column {key!r} is not in {source} (columns: {columns}); choose one of them."
        )
    labels = adata.obs[key]
    labelled = labelled_cells(labels)
    if not labelled.any():
        raise ScqueryError(
            f"The label column {key!r} of {source} labels none of its {len(labels)} cells; label "
            "some of them (cells without a label are used for pretraining only)."
        )
    missing = int((~labelled).sum())
    if missing and not allow_missing:
        raise ScqueryError(
            f"The label column {key!r} of {source} has {missing} cells without a label; label "
            "them or remove them."
        )
    if labels[labelled].nunique() < 2:
        raise ScqueryError(
            f"The label column {key!r} of {source} has only one class; a classifier needs two or more."
        )
    return labelled


def current_umask():
    """The process's umask (read by setting it and setting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_atomically(path, write):
    """Call `write(tmp)` on a temporary file in `path`'s folder, then rename it to `path`.

    A failed write leaves no partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_h5ad(adata, path):
    """Write `adata` to `path` atomically (a temporary file in the same folder, then rename)."""
    write_atomically(path, adata.write_h5ad)


def write_table(table, path):
    """Write a pandas table to `path` as TSV, atomically."""
    write_atomically(path, lambda tmp: table.to_csv(tmp, sep="\t", index=False))
