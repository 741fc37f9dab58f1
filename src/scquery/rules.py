"""The query's options and its Unknown rules: `QueryOptions`, and `SIGNALS`, one entry per signal.

A signal scores each query cell (`Signal.score`, from the `Findings` that `scquery.query.transfer`
gathers) and calls it 'Unknown', with its `reason`, when the score is below (`rejects='below'`) or
above (`'above'`) its threshold: the option `Signal.option` (default `Signal.default`), or the fixed
`Signal.default` where it has no option. A score at the threshold is kept; NaN (not judged) is kept.
The entries are in priority order: a cell takes the reason of the first signal that rejects it.
`transfer`, `REASONS`, `unknown_reasons`, `write_query` (the score's `.obs` column), the command
line's flags and the workflow's schema all loop over `SIGNALS`; a new signal is one entry and one
scoring function here (and its rows in the docs that tests/test_options.py checks).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .options import option


@dataclass
class Findings:
    """What the signals score, per query cell (see `scquery.query`'s module docstring)."""

    expressed: np.ndarray  # does the cell express any reference gene?
    confidence: np.ndarray  # the evidence for its predicted type
    novelty: np.ndarray  # log distance ratio to its type's reference cells, relative to the query's median
    cluster: np.ndarray  # its query cluster (integer code)
    types: dict  # cluster code -> the cluster's type
    processed: object  # the processed query (CSR cells × the model's genes)
    shared: np.ndarray  # per model gene: does the query have it?
    profiles: dict | None  # the reference's type profiles (None: an older bundle without them)


def reference_genes(found):
    return np.asarray(found.expressed)


def confidence(found):
    return found.confidence


# pandas and `profiles` (scipy) load where a query scores its cells, not where the command line builds
# its flags from `QueryOptions` and `SIGNALS`, so that its checks answer at once (tests/test_cli.py).


def cluster_novelty(found):
    import pandas as pd

    return pd.Series(found.novelty).groupby(found.cluster).transform("median").to_numpy(np.float32)


def lineage_markers(found):
    from .profiles import marker_agreement

    return _per_cluster(found, marker_agreement)


def own_markers(found):
    from .profiles import unique_markers

    return _per_cluster(found, unique_markers)


def _per_cluster(found, measure):
    """`measure` (a `scquery.profiles` share) of each cell's cluster; NaN without profiles."""
    ids, rows = np.unique(found.cluster, return_inverse=True)
    if found.profiles is None:
        return np.full(len(rows), np.nan, dtype=np.float32)
    shares = measure(found.processed, found.cluster, found.types, found.profiles, measured=found.shared)
    return shares[ids].to_numpy(np.float32)[rows]


@dataclass(frozen=True)
class Signal:
    """One Unknown rule (see the module docstring); `column`: its score's obs column
    `{key_added}_{column}` (None: not written); `when`: the command line's words for it."""

    reason: str
    when: str
    score: Callable
    rejects: str
    default: float
    option: str | None = None
    column: str | None = None
    help: str = ""
    limits: tuple = ()

    def field(self):
        """The `QueryOptions` field of the signal's threshold."""
        return option(self.default, self.help, **dict(self.limits))

    def rejected(self, score, threshold):
        score = np.asarray(score)
        return score < threshold if self.rejects == "below" else score > threshold


OFF = " (0 turns the check off)"
SIGNALS = [
    Signal("no reference genes", "it expresses none of the model's genes", reference_genes, "below", 1),
    Signal(
        "low confidence",
        "its confidence is low",
        confidence,
        "below",
        0.5,
        option="min_confidence",
        column="confidence",
        help="least confidence (mean of the neighbours' vote share and the classifier's probability) "
        "of a prediction, else Unknown",
        limits=(("low", 0), ("high", 1)),
    ),
    Signal(
        "new cluster",
        "its query cluster sits far from every reference type",
        cluster_novelty,
        "above",
        1.0,
        option="novelty_threshold",
        column="cluster_novelty",
        help="largest novelty of a query cluster (log of how much farther it lies from its types than "
        "the query's median cell), else its cells are Unknown",
        limits=(("low", 0), ("low_open", True)),
    ),
    Signal(
        "markers differ",
        "the cluster's markers differ from its type's",
        lineage_markers,
        "below",
        0.6,
        option="min_marker_agreement",
        column="marker_agreement",
        help="least share of its type's lineage genes (those found in the largest share more of the "
        "type's reference cells than of the types of the query's other clusters) a query cluster must "
        "express above the query's average type (each type the mean of its clusters), else its cells "
        "are Unknown" + OFF,
        limits=(("low", 0), ("high", 1)),
    ),
    Signal(
        "markers differ",
        "it lacks its type's own genes",
        own_markers,
        "below",
        0.7,
        option="min_unique_markers",
        column="unique_markers",
        help="the same for its type's own genes (those found in more of the type's cells than of every "
        "other reference type's)" + OFF,
        limits=(("low", 0), ("high", 1)),
    ),
]

#: Why a cell is 'Unknown' (obs '<key>_unknown_reason'); '' for predicted cells.
REASONS = ["", *dict.fromkeys(signal.reason for signal in SIGNALS)]


def unknown_reasons(*scores, **thresholds):
    """Per cell, the code of why it is 'Unknown' (an index into `REASONS`; 0: predicted): the first
    signal of `SIGNALS` that rejects it. `scores`: one per signal, in their order; `thresholds`:
    by option name."""
    reason = np.zeros(len(scores[0]), dtype=np.int64)
    for signal, score in reversed(list(zip(SIGNALS, scores, strict=True))):
        threshold = thresholds[signal.option] if signal.option else signal.default
        reason[signal.rejected(score, threshold)] = REASONS.index(signal.reason)
    return reason


QueryOptions = dataclasses.make_dataclass(
    "QueryOptions",
    [
        ("k", int, option(15, "reference neighbours per query cell", low=1, integer=True)),
        *[(signal.option, float, signal.field()) for signal in SIGNALS if signal.option],
        (
            "resolution",
            float,
            option(
                1.0,
                "Leiden resolution of the query clusters (higher: more, smaller clusters)",
                low=0,
                low_open=True,
            ),
        ),
        (
            "majority_voting",
            bool,
            option(False, "give every cell of a query cluster the cluster's most probable type"),
        ),
        ("seed", int, option(0, "seed of the query's clustering", integer=True, cli=False, workflow=False)),
    ],
    frozen=True,
    namespace={"__module__": __name__},
)
QueryOptions.__doc__ = "Every option of `scquery.query.query` but those of reading (`InputOptions`)."


def thresholds(options):
    """The signals' thresholds in `options`, by option name."""
    return {signal.option: getattr(options, signal.option) for signal in SIGNALS if signal.option}


def judge(found, options):
    """`(scores, reason)`: each signal's score of the `Findings` `found`, in the order of `SIGNALS`,
    and each cell's Unknown reason (`unknown_reasons`) under the thresholds of `options`."""
    scores = [signal.score(found) for signal in SIGNALS]
    return scores, unknown_reasons(*scores, **thresholds(options))
