"""Which values of an AnnData to use, taken once as a `Cells` value, and the checks of such a matrix.

`select_values` takes `.X`, a layer or `.raw` (the options `layer`, `use_raw`) and the gene names
(`var_names`, or the `var` column `gene_key`) without changing the AnnData, checks the values
(`check_matrix`: no non-finite values, no negative counts) and gives them as one frozen `Cells`: what
preprocessing reads, so that no later step goes back to the AnnData or converts the matrix again.
"""

import warnings
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ScqueryError
from .preflight import check_values_place
from .provenance import source_of

try:
    from anndata.abc import CSRDataset
except ImportError:  # anndata < 0.11
    from anndata.experimental import CSRDataset


def to_csr32(X):
    """`X` as a CSR float32 matrix (no copy when it already is one)."""
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32)
    return sp.csr_matrix(np.asarray(X, dtype=np.float32))


def check_matrix(X, source, *, counts=False):
    """Raise `ScqueryError` when the CSR matrix `X` holds NaN or infinite values, or negative values
    where counts are expected: when `counts` is true, or when every value is a whole number (counts
    cannot be negative)."""
    if not np.isfinite(X.data).all():
        raise ScqueryError(
            f"The expression values of {source} contain NaN or infinite values; remove or "
            "replace them before use."
        )
    if X.nnz and X.data.min() < 0 and (counts or np.array_equal(X.data, np.round(X.data))):
        what = "counts of" if counts else "values of"
        raise ScqueryError(
            f"The {what} {source} contain {int((X.data < 0).sum())} negative values"
            f"{'' if counts else ' among whole numbers, as in counts'}, and counts cannot be negative; "
            "give the raw counts (e.g. layer='counts') or normalized values."
        )


@dataclass(frozen=True)
class Cells:
    """A dataset's values as preprocessing reads them (`select_values`): `X`, CSR float32 (checked),
    or the `.X` of an h5ad opened with `backed='r'`, left on disk (a `CSRDataset`); `genes`, their names;
    `obs`, the cells' annotations (the AnnData's own: read them, do not change them); `source`, what
    messages call the data. What the values are (counts, normalized, their scale) is recognized
    where they are normalized (`scquery.preprocessing.scales`)."""

    X: object
    genes: pd.Index
    obs: pd.DataFrame
    source: str


def select_values(adata, *, layer, use_raw, gene_key=None, counts=False, on_disk=False):
    """The values of `adata` to use, as `Cells`, leaving `adata` as it is.

    The values are `adata.layers[layer]`, `adata.raw.X` (`use_raw`) or (`layer` None, `use_raw`
    false: `scquery.options.InputOptions`' defaults) `adata.X`, as CSR float32 (backed data is
    loaded, unless `on_disk`: a backed `.X` then stays on disk, for reading in blocks) and checked
    (`check_matrix`; `counts`: they must be counts). The genes are `adata.raw.var_names` or
    `adata.var_names` with repeated names made unique (the second `TP53` becomes `TP53-1`), or the
    `var` column `gene_key`. The matrix may share memory with `adata`'s: read it, do not change it.

    Raises `ScqueryError` when the layer, `.raw` or the gene column does not exist, `.X` is missing,
    the values hold no cell or no gene, or they fail the check.
    """
    source = source_of(adata)
    check_values_place(
        source, layer=layer, use_raw=use_raw, layers=list(adata.layers.keys()), has_raw=adata.raw is not None
    )
    var = adata.var
    if use_raw:
        X, var = adata.raw.X, adata.raw.var
    elif layer is not None:
        X = adata.layers[layer]
    else:
        X = adata.X
        if X is None:
            places = [f"layer {name!r}" for name in adata.layers] + [".raw"] * (adata.raw is not None)
            raise ScqueryError(
                f"{source} has no expression values in .X; choose where they are "
                f"({', '.join(places) or 'it has no layers or .raw either'}) with layer= or use_raw "
                "(--layer, --use-raw)."
            )
    genes = _gene_names(var, gene_key, source)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ScqueryError(
            f"{source} holds {X.shape[0]} cells and {X.shape[1]} genes; give data with at least one cell "
            "and one gene."
        )
    if on_disk and isinstance(X, CSRDataset):
        return Cells(X, genes, adata.obs, source)  # checked block by block where it is read
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        X = X[:]
    X = to_csr32(X)
    check_matrix(X, source, counts=counts)
    return Cells(X, genes, adata.obs, source)


def _gene_names(var, gene_key, source):
    """The gene names of `var`: its index with repeated names made unique, or its column `gene_key`."""
    if gene_key is not None:
        if gene_key not in var:
            columns = ", ".join(map(str, var.columns)) or "none"
            raise ScqueryError(
                f"The gene column {gene_key!r} is not in the var of {source} (columns: {columns}); "
                "choose one of them or leave out gene_key."
            )
        return pd.Index(var[gene_key])
    names = pd.Index(var.index.astype(str))
    if names.is_unique:
        return names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ad.utils.make_index_unique(names)
