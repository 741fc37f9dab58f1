"""scquery as the benchmark runs it: train on the reference, then query (kNN transfer and
classifier head read from one query call)."""

from scquery.config import load_train_config
from scquery.options import InputOptions
from scquery.query import UNKNOWN, query
from scquery.train import train

#: The benchmark's scquery options on top of the defaults: the inputs are curated already, so the
#: per-cell gene-count filter is off (every method sees every reference cell).
BASE_OPTIONS = {"min_genes": 0}
QUICK_OPTIONS = {"pretrain_epochs": 2, "epochs": 8, "hidden_sizes": [128, 32]}
#: Training options of the run's command line (`python -m benchmarks --train-options JSON`), on top
#: of every other: e.g. `{"mixed_precision": true}` reruns a part in mixed precision.
OVERRIDES = {}


def scquery_config(*, quick, pretrain=True, **options):
    """The training configuration of a benchmark run (`options` on top, then `OVERRIDES`)."""
    return load_train_config(
        {**BASE_OPTIONS, **(QUICK_OPTIONS if quick else {}), "pretrain": pretrain, **options, **OVERRIDES}
    )


def run_scquery(
    reference,
    query_data,
    *,
    quick=False,
    pretrain=True,
    seed=0,
    config=None,
    species=None,
    min_overlap=InputOptions.min_overlap,
    **train_options,
):
    """Train scquery on `reference` (with `config`, or the benchmark's; `train_options`: `unlabeled`,
    `encoder` of `scquery.train.train`) and query `query_data` (a copy is annotated; `species`: the
    query's, where it differs from the reference's; `min_overlap`: the least share of the model's
    genes it must hold).

    Returns the prediction, the kNN vote's and the classifier's own answers, the share of cells
    rejected as Unknown, and the
    reference and query embeddings.
    """
    bundle = train(
        reference,
        label_key="label",
        config=config or scquery_config(quick=quick, pretrain=pretrain),
        seed=seed,
        **train_options,
    )
    annotated = query_data.copy()
    k = min(15, bundle.reference.n_obs)  # few labelled cells
    query(annotated, bundle, k=k, species=species, min_overlap=min_overlap)
    prediction = annotated.obs["scquery_prediction"].astype(str).to_numpy()
    return {
        "prediction": prediction,
        "knn": annotated.obs["scquery_knn"].astype(str).to_numpy(),
        "classifier": annotated.obs["scquery_classifier"].astype(str).to_numpy(),
        "unknown_fraction": float((prediction == UNKNOWN).mean()),
        "propagated": int(bundle.history["cells"].get("propagated", 0)),
        "reference_embedding": bundle.reference.obsm["X_scquery"],
        "reference_labels": bundle.reference.obs["label"].astype(str).to_numpy(),
        "query_embedding": annotated.obsm["X_scquery"],
    }
