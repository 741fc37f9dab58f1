"""Options declared once: each a dataclass field with its default, limits and help text.

`InputOptions` says how a query's values are read and matched to a model's genes (`embed`, `query`,
`extend`; `scquery.rules.QueryOptions` holds the query's own options, `scquery.config.TrainConfig`
training's). The command line's flags (`scquery.cli`), the schemas (`schema(...)`, checked by
tests/test_options.py) and the public functions' keywords are made from or checked against these
fields; stage functions take the options object and repeat no default.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field

from .errors import ScqueryError, check_number


def option(
    default,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    choices: tuple | None = None,
    **surfaces,
):
    """A dataclass field: `default`, `help` (the CLI's and the schema's words), numeric limits
    (`check_number`'s; of each item of a list), `choices`; `surfaces` can say `cli=False` (no
    command-line flag), `workflow=False` (no workflow key), `recorded=False` (not in
    `uns[key]['params']`), `metavar`, `exclusive` (flags of one name exclude each other),
    `min_items` (of a list)."""
    limits = {"low": low, "high": high, "low_open": low_open, "high_open": high_open, "integer": integer}
    number = low is not None or high is not None or integer
    metadata = {"help": help, "limits": limits if number else None, "choices": choices, **surfaces}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(item):
    """The default of the dataclass field `item` (made anew where it is a list)."""
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


def item_type(item):
    """`(type, many)`: the Python type of a value of the field `item` (int, float, or None for text)
    and whether the option is a list of them."""
    members = [member for member in _members(item.type) if member is not type(None)]
    listed = typing.get_origin(members[0]) is list
    single = typing.get_args(members[0])[0] if listed else members[0]
    return (single if single in (int, float) else None), listed


def check(options, *, flags=False):
    """Raise `ScqueryError` unless each of `options`' values is within its limits and choices; the
    sentence names the option as a keyword, or with `flags` as the command line's flag (`--k`)."""
    for item in dataclasses.fields(options):
        value, meta = getattr(options, item.name), item.metadata
        name = "--" + item.name.replace("_", "-") if flags else item.name
        if value is None and type(None) in _members(item.type):
            continue
        if meta["limits"] is not None:
            for each in value if isinstance(value, list) else [value]:
                check_number(name, each, **meta["limits"])
        if meta["choices"] is not None and value is not None and value not in meta["choices"]:
            raise ScqueryError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}.")
    return options


def take(values, *kinds):
    """An options object of each of `kinds`, checked (`check`), from the mapping `values` (a public
    function's `locals()`): the entries named like its fields (the others keep their defaults). One
    kind gives one object, several a tuple."""
    taken = tuple(
        check(
            kind(**{item.name: values[item.name] for item in dataclasses.fields(kind) if item.name in values})
        )
        for kind in kinds
    )
    return taken[0] if len(taken) == 1 else taken


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
            if meta["choices"] is not None:
                entry = {"enum": list(meta["choices"])}
            else:
                entry = _json_schema(item.type, meta["limits"] or {})
                if "min_items" in meta:
                    entry["minItems"] = meta["min_items"]
            properties[item.name] = {**entry, "description": _sentence(meta["help"])}
    return properties


#: The JSON schema type of each Python type an option may have.
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _members(annotation):
    """The types of a union annotation (`float | None`: float and NoneType), or the annotation."""
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)


def _json_schema(annotation, limits):
    """The JSON schema of values of `annotation` (a type, a union with None, or `list[...]`), with
    the numeric `limits` (of the items of a list)."""
    members = _members(annotation)
    names = ["array" if typing.get_origin(member) is list else _JSON_TYPES[member] for member in members]
    entry = bounds = {"type": names[0] if len(names) == 1 else names}
    for member in members:
        if typing.get_origin(member) is list:
            entry["items"] = bounds = _json_schema(typing.get_args(member)[0], {})
    if limits.get("low") is not None:
        bounds["exclusiveMinimum" if limits["low_open"] else "minimum"] = limits["low"]
    if limits.get("high") is not None:
        bounds["exclusiveMaximum" if limits["high_open"] else "maximum"] = limits["high"]
    return entry


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
