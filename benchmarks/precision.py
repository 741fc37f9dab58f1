"""Mixed precision's accuracy (`--only precision`): scquery trained on every split of the quality part
in float32 and in mixed precision (the training option `mixed_precision`, Keras's `mixed_bfloat16`),
all else equal (the seed, the options and the splits of `--only quality`); the kNN vote's and the
classifier head's accuracy and macro-F1 (the quality part's), and the prediction's (with Unknown).
As a yardstick, float32 with the next seed: the change another seed alone makes. Mixed precision
changes scquery's training only, so the peers are left out: the quality part scores them."""

import time

from .methods import run_scquery, scquery_config
from .metrics import label_scores
from .tasks import splits

#: Issue 32's target: mixed precision changes accuracy on the quality benchmark by at most this much
#: (each task's mean over its folds, for the kNN vote and the classifier head).
MAX_CHANGE = 0.005
#: The answers scored: the quality part's two (judged by the target), and the prediction.
HEADS = {"knn": "kNN vote", "classifier": "classifier", "prediction": "prediction (with Unknown)"}
JUDGED = ("knn", "classifier")
#: The runs of each split: (mixed precision, the seed's offset) → name.
RUNS = {(False, 0): "float32", (True, 0): "mixed_bfloat16", (False, 1): "float32, next seed"}


def run_precision(*, quick, seed=0, log=print):
    """One row per split and run (`RUNS`): each head's accuracy and macro-F1, and the seconds."""
    rows = []
    for split in splits(quick=quick):
        truth = split.query.obs["label"].astype(str).to_numpy()
        for (mixed, offset), run in RUNS.items():
            config = scquery_config(quick=quick, mixed_precision=mixed)
            start = time.perf_counter()
            result = run_scquery(split.reference, split.query, config=config, seed=seed + offset)
            row = {
                "task": split.task,
                "fold": split.fold,
                "run": run,
                "seconds": round(time.perf_counter() - start, 2),
            }
            for head in HEADS:
                scores = label_scores(truth, result[head])
                row[f"{head}_accuracy"], row[f"{head}_macro_f1"] = scores["accuracy"], scores["macro_f1"]
            rows.append(row)
            log(
                f"  {split.task} [{split.fold}] {run}: accuracy kNN {row['knn_accuracy']:.3f}, "
                f"classifier {row['classifier_accuracy']:.3f}, {row['seconds']} s"
            )
    return {"rows": rows, "max_change": MAX_CHANGE, "seed": seed}
