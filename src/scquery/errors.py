"""The project's error for problems with what the user gave, and the check of numeric options."""

import math
import numbers


class ScqueryError(Exception):
    """Bad input: one sentence saying what is wrong, in which file, and what to do.

    The command-line interface prints it without a traceback and exits with status 2.
    """


class TooFewGenes(ScqueryError):
    """Data sharing fewer of the model's genes than the least share `option` allows (the option's
    name: 'min_overlap' for a query, 'unlabeled_min_overlap' for unlabelled data)."""

    def __init__(self, message, option):
        super().__init__(message)
        self.option = option

    def __reduce__(self):  # whole across processes (the workflow's, a parallel read's)
        return type(self), (str(self), self.option)


def check_number(name, value, *, low=None, high=None, low_open=False, high_open=False, integer=False):
    """Raise `ScqueryError` unless `value` is a finite number (a whole one with `integer`) in range.

    The range is `[low, high]` (`(low, …` with `low_open`, `…, high)` with `high_open`); a bound of
    None is open.
    """
    kind = "a whole number" if integer else "a finite number"
    if low is not None and high is not None:
        kind += f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        kind += f" {'above' if low_open else 'of at least'} {low}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ScqueryError(f"{name} must be {kind}, got {value!r}.")
