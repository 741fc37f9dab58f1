"""Where pretraining pays: the few-label tasks of `benchmarks.labels`, its pairs in their splits (1 %
and 5 % of each reference's labels kept, the same cells per seed; the query study's cells given as
unlabelled data), scquery pretrained under each variant of `VARIANTS` (the noise, the width and
depth, the fine-tuning epochs, the corpus), against the same without pretraining. Each variant is
the training options it changes on top of the benchmark's (`REFERENCE_ONLY`: the defaults, the
query study's cells not given); what users read (the prediction) and the classifier head are
recorded per seed. The peers on the same tasks, seeds and labels are in the labels part.
"""

import time

from .labels import (
    QUICK_SEEDS,
    SEEDS,
    _Run,
    each_task,
    pretrain_on_query,
    pretrain_reference,
    summarize,
)

FRACTIONS = (0.01, 0.05)
QUICK_FRACTIONS = (0.05,)
DEFAULTS = "defaults (masking 0.2, 50 epochs, 500 → 250 → 100)"
NONE = "no pretraining"
REFERENCE_ONLY = "the reference's cells alone (the query study not given)"
#: Each variant's training options on top of the benchmark's.
VARIANTS = {
    DEFAULTS: {},
    REFERENCE_ONLY: {},  # after DEFAULTS: a query study refused at the default overlap is lowered
    "Gaussian noise (sd 0.2)": {"noise": "gaussian"},
    "masking 0.5": {"noise_level": 0.5},
    "wider: 1000 → 100": {"hidden_sizes": [1000, 100]},
    "shallower: 500 → 100 (the earlier defaults)": {"hidden_sizes": [500, 100]},
    "15 fine-tuning epochs": {"epochs": 15},
    NONE: {"pretrain": False},
}
QUICK_VARIANTS = (DEFAULTS, REFERENCE_ONLY, "Gaussian noise (sd 0.2)", NONE)


def run_pretraining(*, quick, log=print):
    """The score rows of every task, label fraction, seed and variant, their summary and settings."""
    fractions = QUICK_FRACTIONS if quick else FRACTIONS
    seeds = QUICK_SEEDS if quick else SEEDS
    variants = {name: VARIANTS[name] for name in QUICK_VARIANTS} if quick else VARIANTS
    rows, skipped, lowered = each_task(
        _variants, quick, variants, quick=quick, fractions=fractions, seeds=seeds, log=log
    )
    summary = summarize(rows)
    return {
        "fractions": list(fractions),
        "seeds": list(seeds),
        "variants": dict(variants),
        "rows": rows,
        "summary": summary.to_dict("records"),
        "skipped": skipped,
        "lowered": lowered,
    }


def _variants(task, split, fraction, seed, log, lowered, quick, variants):
    """Every variant's score rows on one task, label fraction and seed."""
    from .methods import scquery_config

    rows = []
    for name, options in variants.items():
        run = _Run(task, split, fraction, seed, scquery_config(quick=quick, **options), log, lowered)
        start = time.perf_counter()
        encoder = _encoder(run, only_reference=name == REFERENCE_ONLY)
        run.scquery(name, encoder=encoder)
        run.rows[-1]["seconds"] = round(time.perf_counter() - start, 2)  # with pretraining
        rows.extend(run.rows)
    return rows


def _encoder(run, *, only_reference):
    """The run's pretrained encoder: on the reference's cells and the query study's
    (`pretrain_on_query`), or on the reference's alone; None without pretraining."""
    if not run.config.pretrain:
        return None
    return pretrain_reference(run) if only_reference else pretrain_on_query(run)
