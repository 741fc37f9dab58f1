"""Cell-type labels: which cells have one, the checks of a label column, and the name of rejected cells."""

from .errors import ScqueryError
from .preflight import missing_column
from .provenance import added_column

#: The prediction of rejected query cells; no reference label may be called so.
UNKNOWN = "Unknown"


def labelled_cells(labels):
    """Boolean mask of the cells that have a label: not NaN/None and not empty (or blank) text."""
    import pandas as pd  # loaded on first use: the command line's checks import this module

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
        columns = [c for c in adata.obs.columns if c != added]
        raise ScqueryError(missing_column(key, columns, source, what="label column"))
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


def listed(names, shown=12):
    """Type names for a message: the first `shown`, then how many there are in all."""
    names = [str(name) for name in names]
    return ", ".join(names[:shown]) + (f", … ({len(names)} in all)" if len(names) > shown else "")


def check_label_map(renames, types, source):
    """Raise `ScqueryError` when the label map `renames` (from `source`: a dict or a file) renames
    known types to names that are not among the model's `types` (a typo); `types` None: unknown."""
    strange = [] if types is None else sorted(set(renames.values()) - set(map(str, types)) - {UNKNOWN})
    if strange:
        where = "The label map" if isinstance(source, dict) else f"The label map {source}"
        raise ScqueryError(
            f"{where} renames known types to {', '.join(map(repr, strange[:3]))}, which the model does "
            f"not predict; use its type names ({listed(sorted(set(map(str, types)) - {UNKNOWN}))})."
        )


def read_label_map(source):
    """A label map as a dict {known name: the model's name}: `source` is a dict, or the path of a
    CSV or TSV file (by its suffix; .txt is tab-separated) with a header line and two columns, the
    names of the known types and the model's types they mean. A name mapped twice to different types
    is an error; names not in the map are compared as they are."""
    if isinstance(source, dict):
        return {str(known): str(model) for known, model in source.items()}
    import pandas as pd

    path = str(source)
    sep = "," if path.lower().removesuffix(".gz").endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ScqueryError(
            f"The label map {path} cannot be read ({error}); give a CSV or TSV file."
        ) from None
    if table.shape[1] < 2:
        raise ScqueryError(
            f"The label map {path} has {table.shape[1]} column; give two (with a header line): the known "
            "names, then the model's type names they mean."
        )
    pairs = table.iloc[:, :2].apply(lambda column: column.str.strip())
    pairs = pairs[(pairs.iloc[:, 0] != "") & (pairs.iloc[:, 1] != "")].drop_duplicates()
    repeated = pairs.iloc[:, 0][pairs.iloc[:, 0].duplicated()]
    if len(repeated):
        raise ScqueryError(
            f"The label map {path} maps {repeated.iloc[0]!r} to more than one type; give each known "
            "name once."
        )
    if pairs.empty:
        raise ScqueryError(f"The label map {path} maps no names; give pairs of names under a header line.")
    return dict(zip(pairs.iloc[:, 0], pairs.iloc[:, 1], strict=True))
