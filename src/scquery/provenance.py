"""Where data and results came from, and `uns['scquery']`, with one owner.

Reading (`scquery.io.read`, `read_many`, `read_backed`; the built-in data) records where the data came
from: `source` (the file, or files, read) and `added_column` (the obs column naming each cell's file,
ours and not the user's). `embed` and `query` write their run under their `key_added`
(`write_run`: the model, the options, what processing the values found, the software's
`current_versions`): under the default key, 'scquery', the run's entries replace those of an earlier
run and the reading's entries stay, so the data's provenance survives a query.
"""

import importlib
import platform
from importlib.metadata import version

import numpy as np

from . import __version__

#: The key of `uns` scquery owns (and the default `key_added` of `embed` and `query`).
KEY = "scquery"
#: The entries reading records; a run keeps them.
READING = ("source", "added_column")


def source_of(adata, default="the data"):
    """What to call `adata` in a message: the file it was read from (reading records it), else `default`."""
    return adata.uns.get(KEY, {}).get("source", default)


def added_column(adata):
    """The obs column reading added (each cell's file), or None."""
    return adata.uns.get(KEY, {}).get("added_column")


def record_reading(adata, *, source=None, added_column=None):
    """Record where `adata` was read from (`source`) and the obs column reading added to it (None:
    left as it is), keeping whatever else `uns['scquery']` holds."""
    given = {"source": None if source is None else str(source), "added_column": added_column}
    adata.uns[KEY] = {
        **dict(adata.uns.get(KEY, {})),
        **{name: value for name, value in given.items() if value is not None},
    }


def write_run(adata, key, *, model_id, params, found, **entries):
    """Write a run to `uns[key]`, replacing an earlier run's (under `KEY`, the reading's entries,
    `READING`, stay): the `model_id`, the `params` (None left out), what processing the values found
    (`found`, a `scquery.preprocessing.align.Alignment`: the gene `overlap`, the input `values`, the
    `species` and, where genes were mapped, the `gene_map`), the `current_versions` and `entries`."""
    kept = adata.uns.get(KEY, {}) if key == KEY else {}
    mapped = {} if found.gene_map is None else {"gene_map": found.gene_map}
    processing = {"overlap": found.overlap, "values": found.values, "species": found.species, **mapped}
    adata.uns[key] = {
        **{name: kept[name] for name in READING if name in kept},
        "model_id": model_id,
        "params": {name: value for name, value in params.items() if value is not None},
        **{name: _storable(value) for name, value in processing.items()},
        "versions": current_versions(),
        **entries,
    }


def add_to_run(adata, key, **entries):
    """Add `entries` to the run written under `uns[key]` (e.g. the command line's scores)."""
    adata.uns[key] = {**adata.uns[key], **entries}


def current_versions() -> dict:
    """Versions of the software that writes a result or a bundle."""
    import keras

    return {
        "scquery": __version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        # the module's own version: the distribution may be named otherwise (tensorflow-cpu)
        "backend_version": importlib.import_module(keras.backend.backend()).__version__,
        "anndata": version("anndata"),
        "scanpy": version("scanpy"),
        "python": platform.python_version(),
    }


def _storable(value):
    """`value` with None entries dropped and numpy scalars made plain, so h5ad can hold it."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, np.generic):
        return value.item()
    return value
