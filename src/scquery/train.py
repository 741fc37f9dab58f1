"""Training, from an annotated reference AnnData to a model bundle."""

import warnings

import anndata as ad
import keras
import numpy as np
import pandas as pd

from .bundle import Bundle, model_digest
from .classifier import build_classifier, embedding_model, fit_classifier, predict_in_chunks
from .config import TrainConfig, load_train_config
from .errors import ScqueryError
from .io import check_labels, select_values
from .logs import logger, without_retracing_warnings
from .preprocess import fit_preprocess
from .pretrain import pretrain_greedy


def prepare_reference(adata, *, label_key, config, layer=None, use_raw=False):
    """Preprocess the reference's values (`.X`, `layers[layer]` or `.raw`: `scquery.io.select_values`)
    and drop the cell types too small to learn.

    Returns the processed AnnData, the preprocessing record, the class names and integer labels.
    """
    check_labels(adata, label_key, source=adata.uns.get("scquery", {}).get("source", "the reference"))
    processed, record = fit_preprocess(
        select_values(adata, layer=layer, use_raw=use_raw),
        min_genes=config.min_genes,
        min_cells=config.min_cells,
        max_pct_mito=config.max_pct_mito,
        target_sum=config.target_sum,
        n_top_genes=config.n_top_genes,
        genes=config.genes,
        scale=config.scale,
    )
    logger.info(
        "preprocessing the reference: %s cells × %s genes → %s cells × %s genes",
        *(f"{n:,}" for n in (*adata.shape, *processed.shape)),
    )
    labels = processed.obs[label_key].astype(str)
    sizes = labels.value_counts()
    small = sizes[sizes < config.min_cells_per_class]
    if len(small):
        warnings.warn(
            f"Dropping {len(small)} cell type(s) with fewer than {config.min_cells_per_class} cells: "
            + ", ".join(f"{name} ({n})" for name, n in small.items())
            + "; lower min_cells_per_class to keep them.",
            stacklevel=2,
        )
        keep = ~labels.isin(small.index).to_numpy()
        processed, labels = processed[keep].copy(), labels[keep]
    if labels.nunique() < 2:
        raise ScqueryError(
            f"Label column '{label_key}' leaves {labels.nunique()} cell type(s) with at least "
            f"{config.min_cells_per_class} cells; a classifier needs two or more."
        )
    classes = sorted(labels.unique())
    y = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    return processed, record, classes, y


@without_retracing_warnings
def pretrain_reference(adata, *, label_key, config=None, seed=0, layer=None, use_raw=False, verbose="auto"):
    """Greedy pretraining on the prepared reference; returns `(encoder_weights, history)`."""
    config = _config(config)
    keras.utils.set_random_seed(seed)
    processed, record, _, _ = prepare_reference(
        adata, label_key=label_key, config=config, layer=layer, use_raw=use_raw
    )
    return _pretrain(processed.X, record, config, seed, verbose)


def _pretrain(X, record, config, seed, verbose):
    return pretrain_greedy(
        X,
        config.hidden_sizes,
        activation=config.activation,
        noise=config.noise,
        noise_level=config.noise_level,
        epochs=config.pretrain_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        finetune_autoencoder=config.finetune_autoencoder,
        scale=record["scale"],
        seed=seed,
        verbose=verbose,
    )


@without_retracing_warnings
def train(
    adata,
    *,
    label_key,
    config=None,
    seed=0,
    layer=None,
    use_raw=False,
    encoder_weights=None,
    pretrain_history=None,
    verbose="auto",
) -> Bundle:
    """Train scquery on an annotated reference and return the model bundle.

    Preprocesses `adata`'s values (`.X`, or `layers[layer]` or `.raw` with `use_raw`), pretrains the encoder
    greedily unless `config.pretrain` is false or `encoder_weights` come from an earlier
    `pretrain_reference` call, fine-tunes the classifier, and embeds every reference cell.
    `adata` is not modified. Each stage is logged to the `scquery` logger; `verbose` sets how the
    epochs are shown (Keras style: 0 not at all, 1 a progress bar, 2 a log line each; 'auto' a bar
    on a terminal or in a notebook, else lines).
    """
    config = _config(config)
    keras.utils.set_random_seed(seed)
    processed, record, classes, y = prepare_reference(
        adata, label_key=label_key, config=config, layer=layer, use_raw=use_raw
    )
    history = {"pretrain": pretrain_history or []}
    if config.pretrain and encoder_weights is None:
        encoder_weights, history["pretrain"] = _pretrain(processed.X, record, config, seed, verbose)
    if not config.pretrain:
        encoder_weights, history["pretrain"] = None, []
    model = build_classifier(
        processed.n_vars,
        config.hidden_sizes,
        len(classes),
        activation=config.activation,
        encoder_weights=encoder_weights,
        scale=record["scale"],
    )
    history["classifier"] = fit_classifier(
        model,
        processed.X,
        y,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        validation_fraction=config.validation_fraction,
        patience=config.patience,
        class_weight=config.class_weight,
        seed=seed,
        verbose=verbose,
    )
    obs = pd.DataFrame(
        {
            "label": pd.Categorical(np.asarray(classes)[y], categories=classes),
            "dataset": processed.obs["dataset"].astype(str).to_numpy()
            if "dataset" in processed.obs
            else "reference",
        },
        index=processed.obs_names.copy(),
    ).astype({"dataset": "category"})
    logger.info("embedding the reference: %s cells", f"{processed.n_obs:,}")
    embedding = predict_in_chunks(embedding_model(model), processed.X)
    return Bundle(
        model=model,
        classes=classes,
        preprocess=record,
        reference=ad.AnnData(obs=obs, obsm={"X_scquery": embedding}),
        label_key=label_key,
        config=config.to_dict(),
        seed=seed,
        history=history,
        model_id=model_digest(model, record["genes"]),
    )


def _config(config):
    return config if isinstance(config, TrainConfig) else load_train_config(config)
