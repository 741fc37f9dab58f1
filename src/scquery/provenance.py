"""`uns['scquery']`, with one owner: what reading records there and what a run writes beside it.

Reading (`scquery.io.read`, `read_many`, `read_backed`; the built-in data) records where the data came
from: `source` (the file, or files, read) and `added_column` (the obs column naming each cell's file,
ours and not the user's). `embed` and `query` write their run under their `key_added`
(`write_run`): under the default key, 'scquery', the run's entries replace those of an earlier run
and the reading's entries stay, so the data's provenance survives a query.
"""

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


def write_run(adata, key, entries):
    """Write a run's `entries` to `uns[key]`, replacing an earlier run's; under `KEY`, the reading's
    entries (`READING`) stay."""
    kept = adata.uns.get(KEY, {}) if key == KEY else {}
    adata.uns[key] = {**{name: kept[name] for name in READING if name in kept}, **entries}


def add_to_run(adata, key, **entries):
    """Add `entries` to the run written under `uns[key]` (e.g. the command line's scores)."""
    adata.uns[key] = {**adata.uns[key], **entries}
