"""The calibrated Unknown decision: the probability that a query group is of no reference type.

A `Calibration` is a logistic model over a query group's marker features (`scquery.profiles.
MARKER_FEATURES`: how much of its type's own, lineage and query-contrast genes it keeps). Each
reference gets its own, fitted when the model is trained (`scquery.selftest`) on the reference's own
cells: each type held out in turn shows what a type the reference lacks looks like once mapped onto
its nearest known type, and the other cells, under a simulated change of study, what a known type
from elsewhere looks like. It is saved in the bundle (`Bundle.calibration`, JSON) and read back by the
query. A bundle saved without one, or a reference with too few types to hold one out, uses `DEFAULT`.

A query from another study, protocol or species shows every type's genes less sharply than the
reference did, by a factor that depends on the two studies, not on the types. So the calibration also
keeps its `level`: how much of its type's genes the self-test's best-kept type keeps (`study_level`).
Where a query's best-kept type keeps less, every group's features are raised by the ratio before the
decision: the query's own best type stands for what a known type looks like in its study.
"""

import dataclasses

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from .profiles import MARKER_FEATURES

#: Version of a calibration's saved form (`Calibration.to_dict`).
VERSION = 1
#: The value a feature that could not be measured (NaN: a type without a profile, too few defining
#: genes, a query of one type) counts as: a group that keeps all of its type's genes.
NOT_MEASURED = 1.0
#: Strength of the logistic model's L2 penalty (scikit-learn's C: smaller is stronger).
PENALTY_C = 1.0
#: The least share of the cells a type must hold to set a study's level (`study_level`).
LEVEL_SHARE = 0.05


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A logistic model of P(no reference type | a query group's `features`).

    Attributes:
        coefficients: one per feature, on the features as `group_features` gives them.
        intercept: the model's intercept.
        features: the names of the features (`scquery.profiles.MARKER_FEATURES`).
        fitted: what it was fitted on (cells, groups, the types held out, the simulated study shift,
            the self-test's AUROC), or `{"default": ...}` for `DEFAULT`.
        level: the self-test's `study_level` with no type held out (None: no rescaling).
    """

    coefficients: tuple
    intercept: float
    features: tuple = MARKER_FEATURES
    fitted: dict = dataclasses.field(default_factory=dict)
    level: float | None = None

    def probability(self, table, *, rescale=False):
        """Per row of `table` (a DataFrame holding the `features` columns): the probability that the
        group is of no reference type. Unmeasured features count as `NOT_MEASURED`. With `rescale`
        (`table` then also holds each group's `type` and `cells`: a query's groups), where the
        table's `study_level` is below the calibration's `level`, the features are first raised by
        the ratio (at most to 1)."""
        level = study_level(table) if rescale and self.level is not None else None
        values = pd.DataFrame(table)[list(self.features)].to_numpy(np.float64)
        values = np.where(np.isfinite(values), values, NOT_MEASURED)
        if level is not None and 0 < level < self.level:
            values = np.minimum(values * (self.level / level), 1.0)
        logit = self.intercept + values @ np.asarray(self.coefficients, dtype=np.float64)
        return 1 / (1 + np.exp(-logit))

    def to_dict(self):
        """The saved form (JSON-serializable), with its `VERSION`."""
        return {
            "version": VERSION,
            "features": list(self.features),
            "coefficients": [float(c) for c in self.coefficients],
            "intercept": float(self.intercept),
            "fitted": self.fitted,
            "level": self.level,
        }

    @classmethod
    def from_dict(cls, saved):
        """The calibration of a saved form; None (the caller falls back to `DEFAULT`) for a form of
        another version or other features, or a damaged one."""
        if not isinstance(saved, dict) or saved.get("version") != VERSION:
            return None
        if tuple(saved.get("features", ())) != MARKER_FEATURES:
            return None
        try:
            coefficients = tuple(float(c) for c in saved["coefficients"])
            intercept = float(saved["intercept"])
            fitted = dict(saved.get("fitted") or {})
            level = None if saved.get("level") is None else float(saved["level"])
        except (KeyError, TypeError, ValueError):
            return None  # damaged: the caller falls back to `DEFAULT`, with its warning
        numbers = [*coefficients, intercept, *([] if level is None else [level])]
        if len(coefficients) != len(MARKER_FEATURES) or not np.isfinite(numbers).all():
            return None
        return cls(
            coefficients=coefficients,
            intercept=intercept,
            features=MARKER_FEATURES,
            fitted=fitted,
            level=level,
        )


def study_level(table):
    """How much of its type's genes a study's best-kept type keeps: per type holding `LEVEL_SHARE` of
    the cells or more, the mean over its groups (weighted by their cells) of each group's mean measured
    feature; the highest. `table` holds the features, `type` and `cells` per group. None where no type
    is measured."""
    values = pd.DataFrame(table)[list(MARKER_FEATURES)].to_numpy(np.float64)
    measured = np.isfinite(values).any(axis=1)
    if not measured.any():
        return None
    frame = pd.DataFrame(
        {
            "mean": np.nanmean(values[measured], axis=1),
            "type": np.asarray(table["type"])[measured],
            "cells": np.asarray(table["cells"], dtype=np.float64)[measured],
        }
    )
    frame["weighted"] = frame["mean"] * frame["cells"]
    per_type = frame.groupby("type")[["weighted", "cells"]].sum()
    per_type = per_type[per_type["cells"] >= LEVEL_SHARE * np.asarray(table["cells"], dtype=np.float64).sum()]
    if per_type.empty:
        return None
    return float((per_type["weighted"] / per_type["cells"]).max())


def fit_calibration(table, *, fitted=None, level=None):
    """A `Calibration` fitted on the self-test's groups (`table`: the feature columns, `cells` and
    `held`, the share of each group's cells of the type held out), with the `level` given, or None
    where no group holds a held-out type. Each cell counts once (a group's cells as new in the share
    `held`, as known in the rest), and new and known cells weigh the same in total."""
    held = table["held"].to_numpy(np.float64)
    cells = table["cells"].to_numpy(np.float64)
    new, known = cells * held, cells * (1 - held)
    if new.sum() <= 0 or known.sum() <= 0:
        return None
    values = table[list(MARKER_FEATURES)].to_numpy(np.float64)
    values = np.where(np.isfinite(values), values, NOT_MEASURED)
    X = np.vstack([values, values])
    y = np.r_[np.ones(len(values)), np.zeros(len(values))]
    weights = np.r_[new / new.sum(), known / known.sum()] * len(values)
    model = LogisticRegression(C=PENALTY_C).fit(X, y, sample_weight=weights)
    return Calibration(
        coefficients=tuple(float(c) for c in model.coef_[0]),
        intercept=float(model.intercept_[0]),
        fitted=dict(fitted or {}),
        level=level,
    )


#: The calibration of a bundle saved without one, and of a reference with too few types to hold one
#: out: set by hand, not fitted. Each feature lowers the probability, the lineage's genes most (a
#: group without them is not of its type, whatever else it shares with it); a group keeping half of
#: each is at 0.5.
DEFAULT = Calibration(
    coefficients=(-2.0, -3.0, -2.0),
    intercept=3.5,
    fitted={"default": "pooled self-tests of the development references"},
)
