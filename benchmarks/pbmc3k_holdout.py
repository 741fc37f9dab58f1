"""Training time and held-out accuracy on pbmc3k, with and without pretraining (issue 4's figure).

Run: `.venv/bin/python -m benchmarks.pbmc3k_holdout [--seeds 0 1 2]`; needs ../shared/data/pbmc3k.h5ad.
"""

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from scquery.embed import compute_embedding
from scquery.train import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k.h5ad"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    full = ad.read_h5ad(DATA)
    full.X = full.layers["counts"].astype(np.float32)
    labels = full.obs["classified"].astype(str).to_numpy()
    print("seed\tpretrain\ttrain_s\taccuracy\tmacro_f1\tepochs")
    for seed in args.seeds:
        reference_rows, query_rows = train_test_split(
            np.arange(full.n_obs), test_size=0.2, stratify=labels, random_state=seed
        )
        reference, query = full[reference_rows].copy(), full[query_rows].copy()
        for pretrain in (True, False):
            start = time.perf_counter()
            bundle = train(reference, label_key="classified", config={"pretrain": pretrain}, seed=seed)
            seconds = time.perf_counter() - start
            _, probabilities, _, _ = compute_embedding(query, bundle)
            predicted = np.asarray(bundle.classes)[probabilities.argmax(1)]
            truth = labels[query_rows]
            known = np.isin(truth, bundle.classes)
            print(
                f"{seed}\t{pretrain}\t{seconds:.1f}\t{accuracy_score(truth[known], predicted[known]):.3f}"
                f"\t{f1_score(truth[known], predicted[known], average='macro'):.3f}"
                f"\t{len(bundle.history['classifier']['loss'])}",
                flush=True,
            )


if __name__ == "__main__":
    main()
