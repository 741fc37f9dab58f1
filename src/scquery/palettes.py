"""One colour per cell type (`scquery.pl.palette`): legible on white, colour-blind-safe, Unknown grey."""

import scanpy as sc

from .labels import UNKNOWN

UNKNOWN_COLOR = "#8c8c8c"
#: Type colours, legible on white and told apart with the common colour-vision deficiencies: Okabe &
#: Ito's, then Paul Tol's muted scheme (the pale ones of each, yellow, sand and light cyan, and black
#: left out). More types than these take scanpy's 102 colours.
COLORS = [
    "#0072b2", "#e69f00", "#009e73", "#d55e00", "#56b4e9", "#cc79a7",
    "#332288", "#117733", "#44aa99", "#cc6677", "#aa4499", "#882255", "#999933",
]  # fmt: skip


def palette(types) -> dict:
    """A colour for each of `types`, in their order (`COLORS`), and grey for Unknown.

    Give every plot the same `types` (e.g. a model's `bundle.classes`, then the query's own types) and
    each type has the same colour in all of them.
    """
    names = [name for name in dict.fromkeys(map(str, types)) if name != UNKNOWN]
    choices = COLORS if len(names) <= len(COLORS) else sc.pl.palettes.default_102
    mapping = {name: choices[i % len(choices)] for i, name in enumerate(names)}
    mapping[UNKNOWN] = UNKNOWN_COLOR
    return mapping
