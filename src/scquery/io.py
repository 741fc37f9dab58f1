"""Reading expression files into AnnData and merging them.

Supported inputs: `.h5ad`; `.h5` (10x Cell Ranger HDF5); `.loom`; `.csv` / `.tsv` / `.txt`
(optionally `.gz`, cells × genes, first column the cell names, first row the gene names); and
10x Matrix Market folders (Cell Ranger v2: `matrix.mtx`, `genes.tsv`, `barcodes.tsv`; v3:
`matrix.mtx.gz`, `features.tsv.gz`, `barcodes.tsv.gz`).

Reading never changes the data: `.X`, its dtype, `.raw`, layers and the cell and gene names are as
in the file. Where the values to use are (`.X`, a layer or `.raw`) is an option of the functions
that use them (`layer=`, `use_raw=`), which take them with `scquery.values.select_values`. `read` only checks
them and records the file in `uns['scquery']['source']` (`scquery.provenance`); what the values are
(counts, normalized, log scale) is recognized by preprocessing (`scquery.preprocessing.scales`), not
here. `read_backed` opens one h5ad with its `.X` left on disk, for training in blocks.
"""

import functools
import os
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from .errors import ScqueryError
from .logs import logger
from .preflight import SUPPORTED, check_format, data_format
from .provenance import record_reading
from .values import CSRDataset, select_values, to_csr32

_TEXT = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_TENX_V2 = ("matrix.mtx", "genes.tsv", "barcodes.tsv")
_TENX_V3 = ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")


def dataset_name(path):
    """The name of a dataset in `obs['dataset']`: the file name without format suffixes."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return name
    for _ in range(2):
        stem, ext = os.path.splitext(name)
        if ext.lower() in {".gz", *READERS}:
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


def _read_text(path, genes_by_cells, *, sep):
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
    names_rows, names_cols = pd.Index(table.index.astype(str)), pd.Index(table.columns.astype(str))
    if genes_by_cells:
        values, names_rows, names_cols = values.T, names_cols, names_rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # repeated names are kept as in the file
        return ad.AnnData(
            sp.csr_matrix(values),
            obs=pd.DataFrame(index=names_rows),
            var=pd.DataFrame(index=names_cols),
        )


def read_h5ad(path, **kwargs):
    """`anndata.read_h5ad(path, **kwargs)`, with the warnings of anndata bringing an older file's
    layout up to date ("Moving element from .uns['neighbors']…", "written without encoding
    metadata") told as one DEBUG line on the `scquery` logger: the file is read the same, and
    nothing the user can do about it is printed. Other warnings pass as they are."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adata = ad.read_h5ad(path, **kwargs)
    updated = [w for w in caught if _updates_format(w)]
    for w in caught:
        if w not in updated:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if updated:
        first = str(updated[0].message).splitlines()[0]
        logger.debug(
            "%s is in an older h5ad layout, updated on reading (%d notes, e.g. %s)", path, len(updated), first
        )
    return adata


def _updates_format(caught):
    """Whether a warning caught while reading is anndata's note that it updated the file's layout."""
    message = str(caught.message)
    return issubclass(caught.category, ad.OldFormatWarning) or (
        issubclass(caught.category, FutureWarning) and message.startswith("Moving element from")
    )


def _read_loom(path):
    with h5py.File(path, "r") as f:
        rows = set(f.get("row_attrs", {}).keys())
        cols = set(f.get("col_attrs", {}).keys())
    var_names = next((k for k in ("Gene", "var_names", "gene_names") if k in rows), "Gene")
    obs_names = next((k for k in ("CellID", "obs_names", "cell_names") if k in cols), "CellID")
    return ad.io.read_loom(path, sparse=True, obs_names=obs_names, var_names=var_names)


#: The reader of each format, by file suffix (a trailing `.gz` aside): `reader(path, genes_by_cells)`.
READERS = {
    ".h5ad": lambda path, genes_by_cells: read_h5ad(path),
    ".h5": lambda path, genes_by_cells: sc.read_10x_h5(path),
    ".loom": lambda path, genes_by_cells: _read_loom(path),
    **{suffix: functools.partial(_read_text, sep=sep) for suffix, sep in _TEXT.items()},
}


def _read_any(path, genes_by_cells):
    """The file's AnnData: an h5ad as it is; any other format with `.X` as CSR float32."""
    suffix = data_format(path)
    if path.is_dir():
        adata = _read_10x_folder(path)
    else:
        check_format(path)  # the formats of READERS
        adata = READERS[suffix](path, genes_by_cells)
        if suffix == ".h5ad":
            return adata
    adata.X = to_csr32(adata.X)
    return adata


def read(path, *, layer=None, use_raw=False, genes_by_cells=False):
    """Read one expression file (see the module docstring for formats) into an AnnData, unchanged.

    Args:
        path: a file or a 10x matrix folder.
        layer, use_raw: where the values to use are (see `select_values`); they are checked (finite,
            non-negative counts), not moved.
        genes_by_cells: for text tables whose rows are genes and columns cells.

    Returns:
        The file's AnnData, with `uns['scquery']['source']` added.
    """
    path = Path(path)
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
            f"The file {path} could not be read as {data_format(path) or '10x folder'} ({err}); "
            f"check that it is a valid file in one of the formats {SUPPORTED}."
        ) from err
    record_reading(adata, source=path)
    select_values(adata, layer=layer, use_raw=use_raw, counts=layer is not None and "count" in layer.lower())
    return adata


#: The obs column naming each cell's file, and the one used when the data has a `dataset` column.
DATASET_KEY, DATASET_KEY_TAKEN = "dataset", "scquery_dataset"


def read_many(paths, *, layer=None, use_raw=False, genes_by_cells=False):
    """Read one file or several (as `read`) and merge them into one AnnData (`scquery.read`).

    Each cell's file name (without suffixes, made unique with `-1`, `-2`, …) goes to
    `obs['dataset']`, or to `obs['scquery_dataset']` when an input already has a `dataset` column
    (which is kept as it is; `uns['scquery']['added_column']` names the column added). One file comes
    back as `read` gives it, plus that column. Several are
    concatenated on the union of their genes (`anndata.concat(join='outer', fill_value=0)`, for
    `.X`, the layers and `.raw` alike): a gene missing from one file is zero in its cells, so no
    gene is lost and sparse values stay sparse. Cell names are kept as they are, even where files
    share some; repeated gene names within a file are made unique so that files can be joined.
    `obsm` entries present in some files only are left out (with a warning) instead of filled with
    zeros. Files may hold values of different kinds (counts, normalized values): preprocessing
    recognizes each dataset's scale on its own.
    """
    paths = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not paths:
        raise ScqueryError("No input files were given; give at least one.")
    adatas = [read(p, layer=layer, use_raw=use_raw, genes_by_cells=genes_by_cells) for p in paths]
    names = list(ad.utils.make_index_unique(pd.Index([dataset_name(p) for p in paths])))
    key = DATASET_KEY_TAKEN if any(DATASET_KEY in a.obs for a in adatas) else DATASET_KEY
    if len(adatas) == 1:
        merged = adatas[0]
        merged.obs[key] = pd.Categorical([names[0]] * merged.n_obs)
        record_reading(merged, added_column=key)  # not the user's: messages leave it out
        return merged
    _drop_partial_obsm(adatas, names)
    for adata in adatas:
        _make_genes_unique(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        merged = ad.concat(adatas, join="outer", fill_value=0, label=key, keys=names, merge="same")
    record_reading(merged, source=", ".join(map(str, paths)), added_column=key)
    return merged


def read_backed(path):
    """An h5ad file opened with `backed='r'` (its `.X` stays on disk), as `read_many` gives one file
    otherwise (`uns['scquery']['source']`, the file's name in `obs['dataset']`); None where its `.X`
    is not a sparse CSR matrix or it cannot be opened so (`read_many` then reads it, or says what is
    wrong)."""
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
    record_reading(adata, source=path, added_column=key)
    return adata


def _drop_partial_obsm(adatas, names):
    """Leave out of each file the `obsm` keys that not every file has alike (same width)."""
    shapes = [{key: np.shape(value)[1:] for key, value in a.obsm.items()} for a in adatas]
    shared = {key for key, shape in shapes[0].items() if all(s.get(key) == shape for s in shapes[1:])}
    partial = sorted(set().union(*shapes) - shared)
    if partial:
        warnings.warn(
            f"obsm {', '.join(map(repr, partial))} is not in every file ({', '.join(names)}) with the "
            "same width, so it is left out of the merged data rather than filled with zeros.",
            stacklevel=3,
        )
    for adata in adatas:
        for key in partial:
            adata.obsm.pop(key, None)


def _make_genes_unique(adata):
    """Make repeated gene names of a freshly read file unique (in `var` and `.raw`) before a merge."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        adata.var_names_make_unique()
        if adata.raw is not None and not adata.raw.var_names.is_unique:
            raw = adata.raw.to_adata()
            raw.var_names_make_unique()
            adata.raw = raw
