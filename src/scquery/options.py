"""Options declared once: each a dataclass field with its default, limits and help text.

`InputOptions` says how a query's values are read and matched to a model's genes (`embed`, `query`,
`extend`; `scquery.rules.QueryOptions` holds the query's own options). The command line's flags
(`scquery.cli`), the workflow's schema (`schema(...)`, checked by tests/test_options.py) and the
public functions' keywords are made from or checked against these fields; stage functions take the
options object and repeat no default.
"""

import dataclasses
from dataclasses import dataclass, field

from .errors import ScqueryError, check_number


def option(default, help, *, low=None, high=None, low_open=False, integer=False, choices=None, **surfaces):
    """A dataclass field: `default`, `help` (the CLI's and the schema's words), numeric limits
    (`check_number`'s), `choices`; `surfaces` can say `cli=False` (no command-line flag),
    `workflow=False` (no workflow key), `recorded=False` (not in `uns[key]['params']`),
    `metavar`, `exclusive` (flags of one name exclude each other)."""
    limits = {"low": low, "high": high, "low_open": low_open, "integer": integer}
    number = low is not None or high is not None or integer
    metadata = {"help": help, "limits": limits if number else None, "choices": choices, **surfaces}
    return field(default=default, metadata=metadata)


def check(options, *, flags=False):
    """Raise `ScqueryError` unless each of `options`' values is within its limits and choices; the
    sentence names the option as a keyword, or with `flags` as the command line's flag (`--k`)."""
    for item in dataclasses.fields(options):
        value, meta = getattr(options, item.name), item.metadata
        name = "--" + item.name.replace("_", "-") if flags else item.name
        if meta["limits"] is not None:
            check_number(name, value, **meta["limits"])
        if meta["choices"] is not None and value is not None and value not in meta["choices"]:
            raise ScqueryError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}.")
    return options


def take(kind, values):
    """An options object of `kind` from the mapping `values` (a public function's `locals()`): the
    entries named like its fields (the others keep their defaults)."""
    return kind(**{item.name: values[item.name] for item in dataclasses.fields(kind) if item.name in values})


def recorded(options):
    """The options a result records (`uns[key]['params']`), by name."""
    return {
        item.name: getattr(options, item.name)
        for item in dataclasses.fields(options)
        if item.metadata.get("recorded", True)
    }


def schema(*kinds):
    """The JSON schema properties of the fields of `kinds` that the workflow takes (by name)."""
    properties = {}
    for kind in kinds:
        for item in dataclasses.fields(kind):
            meta = item.metadata
            if not meta.get("workflow", True):
                continue
            entry = {"type": _json_type(item)}
            limits = meta["limits"] or {}
            if limits.get("low") is not None:
                entry["exclusiveMinimum" if limits["low_open"] else "minimum"] = limits["low"]
            if limits.get("high") is not None:
                entry["maximum"] = limits["high"]
            if meta["choices"] is not None:
                entry = {"enum": list(meta["choices"])}
            properties[item.name] = {**entry, "description": _sentence(meta["help"])}
    return properties


def _json_type(item):
    limits = item.metadata["limits"] or {}
    if isinstance(item.default, bool):
        return "boolean"
    if limits.get("integer"):
        return "integer"
    if isinstance(item.default, float) or limits:
        return "number"
    return ["string", "null"]


def _sentence(text):
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class InputOptions:
    """How a query's values are read and matched to the model's genes (`scquery.embed.embed`)."""

    # The workflow reads files with these two under `query_input` (`scquery.io.read`'s options).
    layer: str | None = option(
        None, "take the values from this layer (e.g. counts); .X is written back unchanged", workflow=False
    )
    use_raw: bool = option(
        False, "take the values (and genes) from .raw; .X is written back unchanged", workflow=False
    )
    gene_key: str | None = option(
        None, "var column holding the gene names (default: var_names)", workflow=False
    )
    min_overlap: float = option(0.5, "least fraction of the model's genes the data must have", low=0, high=1)
    gene_map: object = option(
        None,
        "CSV/TSV file mapping the query's genes to the model's (header; columns query_gene and "
        "reference_gene, else the first two), e.g. orthologues of another species",
        metavar="FILE",
        exclusive="species",
        workflow=False,
        recorded=False,
    )
    species: str | None = option(
        None,
        "the query's species where the model's reference is the other: genes are mapped through the "
        "built-in human-mouse orthologues",
        choices=("human", "mouse"),
        exclusive="species",
        workflow=False,
    )
    batch_size: int = option(
        8192, "cells densified and embedded at a time", low=1, integer=True, workflow=False, recorded=False
    )
