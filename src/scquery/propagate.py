"""Reference points for a thinly labelled reference: its unlabelled cells, labelled by the model.

A reference of a few labelled cells per type gives the query's kNN vote, its per-type distance
scales and its marker profiles too few points: the vote splits, the scales are those of a sparse
sample, and a third of a query can come back 'Unknown' though the classifier knows its types. After
fine-tuning, the reference's unlabelled cells that the classifier labels confidently (its
probability of the top type at least `min_probability`) join the reference points with that label,
marked in `obs['label_source']` as 'propagated' (the user's labelled cells: 'user'). A propagated
label is the model's, never the user's: it serves the vote, the scales and the profiles only.
A fully labelled reference has no cells to propagate to, and its bundle is the same as without this.
"""

import numpy as np
import pandas as pd

#: The bundle reference's obs column saying where each reference point's label comes from.
LABEL_SOURCE = "label_source"
USER, PROPAGATED = "user", "propagated"


def confident_labels(probabilities, *, min_probability):
    """The rows of `probabilities` (cells × classes) whose top class has at least
    `min_probability`, and those classes' codes."""
    probabilities = np.asarray(probabilities)
    if probabilities.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    top = probabilities.argmax(axis=1)
    rows = np.flatnonzero(probabilities[np.arange(len(top)), top] >= min_probability)
    return rows, top[rows].astype(np.int64)


def label_sources(n_user, n_propagated):
    """The categorical `obs['label_source']` of `n_user` user-labelled, then `n_propagated`
    propagated reference points."""
    values = np.repeat([USER, PROPAGATED], [n_user, n_propagated])
    return pd.Categorical(values, categories=[USER, PROPAGATED])
