"""What the user gave, checked from names and file headers alone, before any heavy import or work.

A mistake is answered at once: a path is what it should be (a model bundle, a data file; swapped
ones are named as such), an h5ad file holds the columns, layers or `.raw` asked for (read with h5py:
no matrix is loaded), and where values are taken from is one place. The command line runs these
checks before it imports Keras (`scquery.cli`); `load_bundle`, `select_values`, `check_labels` and
`score` give the same sentences when the package is used from Python.
"""

import difflib
import json
import os
from pathlib import Path

from .errors import ScqueryError
from .outputs import BUNDLE_MARKER, enclosing_bundle

#: The bundle format this scquery reads and writes (`bundle.json`: `format_version`), and the file
#: of its reference cells (`scquery.bundle`).
FORMAT_VERSION, REFERENCE_FILE = 2, "reference.h5ad"
#: The formats scquery reads, by file suffix (a trailing `.gz` aside), and in words.
DATA_FORMATS = (".h5ad", ".h5", ".loom", ".csv", ".tsv", ".txt")
SUPPORTED = ".h5ad, .h5 (10x), .loom, .csv, .tsv, .txt (optionally .gz) or a 10x matrix folder"
#: The files that make a folder a 10x Matrix Market folder (v2 or v3).
TENX_FILES = ("genes.tsv", "features.tsv.gz", "matrix.mtx", "matrix.mtx.gz")
#: The obs columns a query writes start with this (its default `key_added`); suggestions leave them out.
OWN_PREFIX = "scquery_"


def data_format(path):
    """The format suffix of `path` (lower case), a trailing `.gz` aside; '' without one."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _is_data(path):
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in TENX_FILES)
    return data_format(path) in DATA_FORMATS


def check_format(path):
    """Raise `ScqueryError` unless the file `path` is in a format scquery reads (by its suffix)."""
    suffix = data_format(path)
    if suffix not in DATA_FORMATS:
        raise ScqueryError(
            f"The file {path} has an unknown format ({suffix or 'no extension'}); give one of {SUPPORTED}."
        )


def bundle_meta(path):
    """The `bundle.json` (a dict) of the model bundle folder `path`; a `ScqueryError` saying what
    `path` is instead: missing, a data file or 10x folder (swapped with the model?), a file inside a
    bundle, another file or folder, a damaged `bundle.json`, or a bundle of another format."""
    path = Path(path)
    if not path.exists():
        raise ScqueryError(f"The model bundle {path} does not exist; give the folder `scquery train` wrote.")
    outer = None if path.is_dir() else enclosing_bundle(path)
    if outer is not None:
        raise ScqueryError(
            f"{path} is a file inside the model bundle {outer}; give the folder {outer} itself."
        )
    if _is_data(path):
        what = "a 10x data folder" if path.is_dir() else "a data file"
        raise ScqueryError(
            f"{path} is {what}, not a model bundle; did you swap them? Give the model bundle (the "
            "folder `scquery train` wrote) first, then the data."
        )
    if not path.is_dir():
        raise ScqueryError(f"{path} is a file, not a model bundle; give the folder `scquery train` wrote.")
    meta_file = path / BUNDLE_MARKER
    if not meta_file.is_file():
        raise ScqueryError(
            f"{path} is not a scquery model bundle (no {BUNDLE_MARKER}); give the folder `scquery train` "
            "wrote."
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ScqueryError(f"{meta_file} is damaged (not JSON); train the model again.") from None
    found = meta.get("format_version") if isinstance(meta, dict) else None
    if found != FORMAT_VERSION:
        from . import __version__  # '0+source' where scquery runs from its source tree

        raise ScqueryError(
            f"{path} is a bundle of format {found}, and this scquery ({__version__}) reads "
            f"format {FORMAT_VERSION}; use a matching scquery version."
        )
    return meta


def check_data_path(path):
    """Raise `ScqueryError` unless `path`, given as data, is a data file of a known format or a
    folder (10x): not a model bundle, nor a file inside one."""
    outer = enclosing_bundle(path)
    if outer is None:
        if not Path(path).is_dir():
            check_format(path)
        return
    if Path(os.path.abspath(path)) == outer:
        raise ScqueryError(
            f"{path} is a model bundle, not data; did you swap them? Give the model bundle first, "
            "then the data file(s)."
        )
    raise ScqueryError(
        f"{path} is a file inside the model bundle {outer}, which holds the model's own reference, "
        "not data to use; give your data file."
    )


def check_values_place(source, *, layer, use_raw, layers=None, has_raw=None):
    """Raise `ScqueryError` unless the values can be taken from where `layer` / `use_raw` say (one
    place; where `layers` (names) and `has_raw` are given, one the data has)."""
    if layer is not None and use_raw:
        raise ScqueryError(f"Choose either the layer {layer!r} or .raw of {source}, not both.")
    if use_raw and has_raw is False:
        raise ScqueryError(f"{source} has no .raw; leave out use_raw (--use-raw) or give a layer.")
    if layer is not None and layers is not None and layer not in layers:
        raise ScqueryError(
            f"{source} has no layer {layer!r} (layers: {', '.join(layers) or 'none'}); choose one of "
            "them or leave out the layer."
        )


def missing_column(key, columns, source, *, what="column"):
    """The sentence for an obs column `key` that `source` lacks: the closest names first, then the
    user's columns (scquery's own, `scquery_*`, left out)."""
    theirs = [str(c) for c in columns if not str(c).startswith(OWN_PREFIX)]
    close = difflib.get_close_matches(str(key), theirs, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "choose one of them."
    return f"The {what} {key!r} is not in {source} (columns: {', '.join(theirs) or 'none'}); {hint}"


class Header:
    """What an .h5ad file holds besides its matrices, read with h5py: `columns` (of obs), `layers`
    (names), `has_raw`, `n_obs`, and the `categories` of the categorical obs columns named in
    `categories` (column → names; a column stored otherwise is left out)."""

    def __init__(self, path, *, categories=()):
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                obs = handle.get("obs")
                if isinstance(obs, h5py.Group):  # anndata ≥ 0.7: a group of columns
                    self.columns = [str(c) for c in obs.attrs.get("column-order", [])]
                    index = obs.get(obs.attrs.get("_index", "_index"))
                    self.n_obs = None if index is None else len(index)
                    self.categories = {
                        name: [_text(v) for v in obs[name]["categories"][()]]
                        for name in categories
                        if isinstance(obs.get(name), h5py.Group) and "categories" in obs[name]
                    }
                else:  # older files: one record array
                    names = obs.dtype.names if isinstance(obs, h5py.Dataset) else None
                    self.columns = [n for n in names or () if n != "index"]
                    self.n_obs = None if obs is None else len(obs)
                    self.categories = {}
                layers = handle.get("layers")
                self.layers = list(layers.keys()) if isinstance(layers, h5py.Group) else []
                self.has_raw = "raw" in handle or "raw.X" in handle
        except OSError as error:
            raise ScqueryError(
                f"The file {path} could not be read as .h5ad ({error}); check that it is a valid h5ad file."
            ) from None

    @classmethod
    def empty(cls):
        """A header of nothing known: no columns, layers or `.raw`, cells unknown (None)."""
        header = cls.__new__(cls)
        header.columns, header.layers, header.has_raw, header.n_obs, header.categories = (
            [],
            [],
            False,
            None,
            {},
        )
        return header


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def h5ad_header(path):
    """The `Header` of the .h5ad file `path`, or None for other formats."""
    return Header(path) if data_format(path) == ".h5ad" and Path(path).is_file() else None


def check_column(paths, key, *, what="column", every=True):
    """Raise `ScqueryError` unless every data file of `paths` (or, without `every`, one of them) has
    the obs column `key`, read from its header; files without obs columns (text tables, 10x) have
    none."""
    lacking = []
    for path in paths:
        header = h5ad_header(path)
        if header is None:
            lacking.append(
                f"{path} holds no obs columns ({data_format(path) or '10x folder'}), so it has no {what} "
                f"{key!r}; give an .h5ad file whose obs holds it."
            )
        elif key not in header.columns:
            lacking.append(missing_column(key, header.columns, path, what=what))
    if lacking and (every or len(lacking) == len(paths)):
        raise ScqueryError(lacking[0])


def check_k(k, n_reference, *, name="k"):
    """Raise `ScqueryError` when `k` neighbours are more than the reference's `n_reference` cells
    (`name`: the option as the user gave it, `k` or `--k`)."""
    if k > n_reference:
        given = f"{name} {k}" if name.startswith("--") else f"{name}={k}"
        raise ScqueryError(
            f"{given} is more than the {n_reference:,} cells of the model's reference; choose {name} "
            f"of at most {n_reference}."
        )
