"""One colour per cell type (`scquery.pl.palette`): legible on white, told apart with the common
colour-vision deficiencies as far as twelve colours allow, Unknown grey."""

import scanpy as sc

from .labels import UNKNOWN

UNKNOWN_COLOR = "#8c8c8c"
#: Type colours, legible on white (contrast ≥ 2.2, CIELAB lightness 28-78, away from Unknown's grey):
#: twelve of Okabe & Ito's, Paul Tol's, Kenneth Kelly's and matplotlib's colours, chosen so that every
#: pair stays apart in normal vision (CIEDE2000 ≥ 15) and with simulated deuteranopia and protanopia
#: (≥ 10; Machado et al. 2009), and ordered so that the first few are the farthest apart
#: (tests/test_plotting.py measures it). More types than these take scanpy's 102 colours.
COLORS = [
    "#e69f00", "#aa3377", "#56b4e9", "#225522", "#e68fac", "#0072b2",
    "#d55e00", "#f99379", "#225555", "#8c564b", "#ee3377", "#009988",
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
