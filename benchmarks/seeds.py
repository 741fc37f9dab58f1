"""Steadiness over seeds (issue 31): each cross-study development pair (the crossstudy part's tasks
with every type in the reference) trained with several seeds, with and without pretraining.
Per seed: macro-F1 of the classifier head, of the kNN vote and of the prediction (Unknown counts
as wrong); per setting: the seeds' ensemble, their classifier probabilities averaged (the cost of
such an ensemble is one training per seed). The peers run once, in the same run."""

import time

import numpy as np

from scquery.embed import compute_embedding
from scquery.options import InputOptions
from scquery.query import query
from scquery.train import train

from .crossstudy import _peers
from .crossstudy_tasks import tasks
from .methods import scquery_config
from .metrics import label_scores

SEEDS = (0, 1, 2)


def run_seeds(*, quick, log=print):
    """Figures of every development pair (the CellBench pair only, with a small network, when `quick`)."""
    rows, peers = [], []
    for task in tasks():
        if task.held_out or (quick and not task.pair.startswith("CEL-seq2")):
            continue
        log(f"{task.name}: seeds {', '.join(map(str, SEEDS))}")
        truth = task.query.obs["label"].astype(str).to_numpy()
        for pretrain in (True, False):
            setting = "scquery" if pretrain else "scquery, no pretraining"
            probabilities = []
            for seed in SEEDS:
                start = time.perf_counter()
                config = scquery_config(quick=quick, pretrain=pretrain)
                bundle = train(task.reference, label_key="label", config=config, seed=seed)
                seconds = time.perf_counter() - start
                annotated = task.query.copy()
                query(annotated, bundle)
                probabilities.append(compute_embedding(task.query.copy(), bundle, InputOptions())[1])
                row = {"task": task.name, "setting": setting, "seed": seed, "train_s": round(seconds, 2)}
                for method, column in (("head", "classifier"), ("knn", "knn"), ("prediction", "prediction")):
                    predicted = annotated.obs[f"scquery_{column}"].astype(str).to_numpy()
                    row[method] = label_scores(truth, predicted)["macro_f1"]
                rows.append(row)
                log(
                    f"  {setting}, seed {seed}: head {row['head']:.3f}, kNN {row['knn']:.3f}, "
                    f"prediction {row['prediction']:.3f} ({seconds:.1f} s)"
                )
            averaged = np.asarray(bundle.classes)[np.mean(probabilities, axis=0).argmax(axis=1)]
            ensemble = label_scores(truth, averaged)["macro_f1"]
            rows.append({"task": task.name, "setting": setting, "seed": "ensemble", "head": ensemble})
            log(f"  {setting}, the seeds' ensemble: head {ensemble:.3f}")
        for method, predicted in _peers(task, seed=0).items():
            peers.append({"task": task.name, "method": method, **label_scores(truth, predicted)})
    return {"rows": rows, "peers": peers, "seeds": list(SEEDS)}
