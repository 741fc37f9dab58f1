"""The built-in default data: a reference and a query split from scanpy's `pbmc68k_reduced`."""

import numpy as np
import scanpy as sc
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

from .errors import ScqueryError
from .provenance import record_reading

__all__ = ["pbmc68k_split"]


def pbmc68k_split(*, query_fraction=0.3, seed=0):
    """Split `scanpy.datasets.pbmc68k_reduced()` (700 PBMCs, labels `bulk_labels`) in two.

    `.X` holds the log-normalized values of `.raw` (all 765 genes, CSR float32). The query is a
    hold-out of `query_fraction` of the cells stratified by `bulk_labels` (scikit-learn
    `train_test_split` with `random_state=seed`); both keep the original cell order.

    Returns:
        `(reference, query)` with `obs['dataset']` 'pbmc68k_reference' and 'pbmc68k_heldout'.
    """
    if not 0.0 < query_fraction < 1.0:
        raise ScqueryError(
            f"query_fraction must lie between 0 and 1, got {query_fraction!r}; choose e.g. 0.3."
        )
    full = sc.datasets.pbmc68k_reduced()
    adata = full.raw.to_adata()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.uns = {}
    for key in list(adata.obsp):
        del adata.obsp[key]
    labels = adata.obs["bulk_labels"].to_numpy()
    reference_cells, query_cells = train_test_split(
        np.arange(adata.n_obs), test_size=query_fraction, stratify=labels, random_state=seed
    )
    parts = []
    for cells, name in ((reference_cells, "pbmc68k_reference"), (query_cells, "pbmc68k_heldout")):
        part = adata[np.sort(cells)].copy()
        part.obs["dataset"] = name
        record_reading(part, source=f"scanpy.datasets.pbmc68k_reduced ({name})")
        parts.append(part)
    return parts[0], parts[1]
