"""Which values of an AnnData to use, as a CSR float32 matrix, and the checks of such a matrix.

`select_values` takes `.X`, a layer or `.raw` (the options `layer`, `use_raw`) without changing the
AnnData; `check_matrix` refuses non-finite values and negative counts; `source_of` names the data in
messages.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ScqueryError
from .preflight import check_values_place


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


def source_of(adata, default="the data"):
    """What to call `adata` in a message: the file it was read from (`read` records it), else `default`."""
    return adata.uns.get("scquery", {}).get("source", default)


def select_values(adata, *, layer, use_raw):
    """The values of `adata` to use: a new AnnData that leaves `adata` as it is.

    Its `.X` holds `adata.layers[layer]`, `adata.raw.X` (`use_raw`) or (`layer` None, `use_raw`
    false: `scquery.options.InputOptions`' defaults) `adata.X` as CSR float32
    (backed data is loaded); its `var` is `adata.raw.var` or `adata.var` with repeated gene names
    made unique (the second `TP53` becomes `TP53-1`); its `obs` is a copy of `adata.obs`, and
    `uns['scquery']['source']` names the data in messages. Its arrays may share memory with
    `adata`'s: read them, do not change them.

    Raises `ScqueryError` when the layer or `.raw` does not exist, or `.X` is missing.
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
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        X = X[:]
    var = pd.DataFrame(var.copy())
    if not var.index.is_unique:
        var.index = ad.utils.make_index_unique(var.index.astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # repeated cell names are allowed
        values = ad.AnnData(to_csr32(X), obs=adata.obs.copy(), var=var)
    values.uns["scquery"] = {"source": source}
    return values
