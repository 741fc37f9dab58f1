"""The query's options and its Unknown rules: `QueryOptions`, and `SIGNALS`, one entry per signal.

A signal scores each query cell (`Signal.score`, from the `Findings` that `scquery.query.transfer`
gathers) and turns that score into the cell's Unknown part (`Signal.unknown_part`): 0.5 at the signal's
threshold (the option `Signal.option`, default `Signal.default`, or the fixed `Signal.default` where it
has no option), rising toward 1 as the score moves past it (below it for `rejects='below'`, above for
`'above'`) and falling toward 0 as it moves clear. A 'below' signal's score is a share, and its part
is the logistic of the threshold's log odds minus the score's; an 'above' signal's score is a log
ratio (novelty), and its part the logistic of `NOVELTY_SLOPE` times the score minus the threshold.
A cell's Unknown score (`unknown_score`) is its largest part, and the cell is 'Unknown' when that
exceeds `max_unknown_score` (default 0.5: exactly when a score is past its threshold). A score at the
threshold is kept; NaN (not judged) is kept. The entries are in priority order: a cell takes the reason
of the first signal whose part exceeds the cut-off. `transfer`, `REASONS`, `unknown_reasons`,
`write_query` (the score's `.obs` column), the command line's flags and the workflow's schema all loop
over `SIGNALS`; a new signal is one entry and one scoring function here (and its rows in the docs that
tests/test_options.py checks).
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


#: How fast a cluster's novelty (a log ratio) moves its Unknown part, against the shares' log odds
#: (slope 1): chosen on the tuning pairs (benchmarks/PAIRS.md), for the Unknown score's ranking.
NOVELTY_SLOPE = 2.0


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

    def unknown_part(self, score, threshold):
        """Per cell, this signal's part of the Unknown score (module docstring); NaN where not judged."""
        score = np.asarray(score)
        if np.issubdtype(score.dtype, np.floating):  # the threshold in the score's precision, as `<` has it
            threshold = score.dtype.type(threshold)
        s, t = score.astype(np.float64), np.float64(threshold)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            if self.rejects == "above":
                return 1 / (1 + np.exp(NOVELTY_SLOPE * (t - s)))
            share = np.clip(t, 0, 1)  # a threshold beyond [0, 1] keeps or rejects every share
            past, clear = share * (1 - s), s * (1 - share)  # odds(t) / (odds(t) + odds(s)), without / 0
            total = past + clear
            return np.where(total == 0, s < t, past / total)


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


def _parts(scores, thresholds):
    """Each signal's `unknown_part`, in the order of `SIGNALS`."""
    paired = list(zip(SIGNALS, scores, strict=True))
    return [
        signal.unknown_part(score, thresholds[signal.option] if signal.option else signal.default)
        for signal, score in paired
    ]


def unknown_score(*scores, **thresholds):
    """Per cell, its Unknown score: the largest of its signals' parts (module docstring). `scores`: one
    per signal, in their order; `thresholds`: by option name."""
    return _largest(_parts(scores, thresholds))


def unknown_reasons(*scores, max_unknown_score=0.5, **thresholds):
    """Per cell, the code of why it is 'Unknown' (an index into `REASONS`; 0: predicted): the first
    signal of `SIGNALS` whose part exceeds `max_unknown_score`. `scores`, `thresholds`: as in
    `unknown_score`."""
    return _reasons(_parts(scores, thresholds), max_unknown_score)


def _largest(parts):
    return np.fmax.reduce(parts).astype(np.float32)


def _reasons(parts, cut_off):
    reason = np.zeros(len(parts[0]), dtype=np.int64)
    for signal, part in reversed(list(zip(SIGNALS, parts, strict=True))):
        reason[part > cut_off] = REASONS.index(signal.reason)
    return reason


QueryOptions = dataclasses.make_dataclass(
    "QueryOptions",
    [
        ("k", int, option(15, "reference neighbours per query cell", low=1, integer=True)),
        *[(signal.option, float, signal.field()) for signal in SIGNALS if signal.option],
        (
            "max_unknown_score",
            float,
            option(
                0.5,
                "largest Unknown score of a prediction (how far past its threshold the cell's furthest "
                "score lies, 0.5 at the threshold), else Unknown (lower: every rule stricter at once)",
                low=0,
                high=1,
                low_open=True,
                high_open=True,
            ),
        ),
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
    """`(scores, unknown, reason)`: each signal's score of the `Findings` `found`, in the order of
    `SIGNALS`, and each cell's Unknown score (`unknown_score`) and reason (`unknown_reasons`) under the
    thresholds and the cut-off of `options`."""
    scores = [signal.score(found) for signal in SIGNALS]
    parts = _parts(scores, thresholds(options))
    return scores, _largest(parts), _reasons(parts, options.max_unknown_score)
