"""Cell-type labels: which cells have one, the checks of a label column, and the name of rejected cells."""

import pandas as pd

from .errors import ScqueryError
from .provenance import added_column

#: The prediction of rejected query cells; no reference label may be called so.
UNKNOWN = "Unknown"


def labelled_cells(labels):
    """Boolean mask of the cells that have a label: not NaN/None and not empty (or blank) text."""
    labels = pd.Series(labels)
    text = labels.astype(object).where(labels.notna(), "").astype(str).str.strip()
    return (labels.notna() & (text != "")).to_numpy()


def check_labels(adata, key, source="the data", *, min_classes=2, allow_missing=False):
    """Raise `ScqueryError` unless `obs[key]` exists, labels `min_classes` classes or more, and none
    of them is `'Unknown'` (the label of rejected query cells); return the mask of labelled cells
    (`labelled_cells`).

    Cells without a label (NaN or empty) are an error, unless `allow_missing` (unlabelled cells
    of a training reference serve pretraining only); even then some cells must be labelled.
    `source` names the file in the message.
    """
    if key not in adata.obs:
        added = added_column(adata)  # by read_many, not in the file
        columns = ", ".join(str(c) for c in adata.obs.columns if c != added) or "none"
        raise ScqueryError(
            f"The label column {key!r} is not in {source} (columns: {columns}); choose one of them."
        )
    labels = adata.obs[key]
    labelled = labelled_cells(labels)
    if not labelled.any():
        raise ScqueryError(
            f"The label column {key!r} of {source} labels none of its {len(labels)} cells; label "
            "some of them (cells without a label serve pretraining only)."
        )
    missing = int((~labelled).sum())
    if missing and not allow_missing:
        raise ScqueryError(
            f"The label column {key!r} of {source} has {missing} cells without a label; label "
            "them or remove them."
        )
    labels = labels[labelled]
    if labels.nunique() < min_classes:
        raise ScqueryError(
            f"The label column {key!r} of {source} has only one class; a classifier needs two or more."
        )
    unknown = int((labels.astype(str) == UNKNOWN).sum())
    if unknown:
        raise ScqueryError(
            f"The label column {key!r} of {source} calls {unknown} cells {UNKNOWN!r}, the prediction "
            f"scquery gives cells unlike the reference; rename that label (e.g. 'unassigned') or "
            "remove those cells."
        )
    return labelled
