"""Training, from a reference AnnData (some or all of its cells labelled) to a model bundle.

One path: preprocess the reference (all its cells: quality control, normalization and the choice of
genes see labelled and unlabelled cells alike) → pretrain the encoder on every reference cell and on
the `unlabeled` data, processed like a query (unless a `PretrainedEncoder` is given, or
`config.pretrain` is false) → fine-tune the classifier on the labelled cells → label the
unlabelled reference cells the classifier is confident about (`scquery.propagate`, marked
'propagated' in the reference's `obs['label_source']`) → embed the labelled and propagated cells:
they are the query's reference points, saved with each cell type's mean expression profile
(`scquery.profiles`). Cells without a label (NaN or empty) are not classified on; a fully labelled
reference has no propagated cells.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .batches import device_rows
from .bundle import Bundle, model_digest, with_index
from .classifier import build_classifier, embedding_model, fit_classifier, predict_in_chunks
from .config import TrainConfig, load_train_config
from .errors import ScqueryError
from .labels import check_labels, labelled_cells
from .logs import logger, without_retracing_warnings
from .preprocess import apply_preprocess, qc_cells
from .pretrain import PretrainedEncoder, pretrain_greedy, seed_for
from .profiles import PROFILES_KEY, type_profiles
from .propagate import LABEL_SOURCE, confident_labels, label_sources
from .stream import fit_streamed
from .values import select_values, source_of

#: Keys of the random streams of a training run (see `scquery.pretrain.seed_for`).
_PRETRAIN, _CLASSIFIER = 1, 2


@without_retracing_warnings
def pretrain(
    adata,
    *,
    label_key=None,
    config=None,
    unlabeled=None,
    seed=0,
    layer=None,
    use_raw=False,
    verbose="auto",
) -> PretrainedEncoder:
    """Preprocess the reference `adata` as `train` does and pretrain the encoder greedily on all
    its cells and the `unlabeled` data; `train(..., encoder=...)` goes on from the result. The
    labels (`obs[label_key]`, the same as `train`'s) serve only to choose the genes: each type's
    defining genes join the highly variable ones (`config.marker_genes`). `adata` and `unlabeled`
    are not modified."""
    config = _config(config)
    _check_seed(seed)
    if label_key is not None:
        check_labels(adata, label_key, source=source_of(adata, "the reference"), allow_missing=True)
    values = {"layer": layer, "use_raw": use_raw}
    processed, record = _preprocess(adata, config, values, label_key=label_key)
    return _pretrain(processed, record, unlabeled, config, values, seed, verbose, rows="auto")


@without_retracing_warnings
def train(
    adata,
    *,
    label_key,
    config=None,
    unlabeled=None,
    encoder=None,
    seed=0,
    layer=None,
    use_raw=False,
    species=None,
    verbose="auto",
) -> Bundle:
    """Train scquery on a reference whose `obs[label_key]` labels some or all cells; return the bundle.

    Preprocesses `adata`'s values (`.X`, `layers[layer]` or `.raw` with `use_raw`), pretrains the encoder
    greedily on all its cells and the `unlabeled` data unless `config.pretrain` is false or `encoder`
    (a `PretrainedEncoder`, from `pretrain`) is given, fine-tunes the classifier on the labelled cells
    of the cell types with at least `config.min_cells_per_class` cells, labels the unlabelled
    reference cells it is confident about (`config.propagate`, `scquery.propagate`), and embeds
    both (the reference points of `scquery.query.query`; `obs['label_source']` says 'user' or
    'propagated'). Nothing given is modified.

    An h5ad opened with `anndata.read_h5ad(path, backed='r')` is read from disk in blocks and never
    whole (`scquery.stream`): memory does not grow with its matrix, and the model is the one its data
    in memory give. Within `keras.distribution.DataParallel(...).scope()` (JAX backend) each batch
    is split over the devices (docs/SCALING.md).

    Args:
        label_key: the obs column of cell types; cells without one (NaN or empty) serve pretraining
            and propagation only, and a column labelling no cell is an error.
        config: a `TrainConfig`, a dict or YAML path of options (`scquery.config.load_train_config`).
        unlabeled: AnnData (or a list of them) of more cells for pretraining only, in any values
            and genes a query may have (taken from the same `layer` or `.raw`): each is filtered
            (the reference's quality control), normalized and aligned to the reference's genes
            like a query (`apply_preprocess`).
        encoder: a `PretrainedEncoder` of this reference and configuration, used instead of
            pretraining here.
        species: the reference's species, 'human' or 'mouse' (default: detected from the gene
            names, `scquery.orthologs.detect_species`), recorded in the bundle for queries of the
            other species (`query(..., species=...)`).
        seed: seeds every random choice (weights, noise, batch order, validation split): the
            same seed gives the same model on the same machine. The global random state is untouched.
        verbose: how the epochs are shown, Keras style: 0 not at all, 1 a progress bar, 2 a log line
            each; 'auto' a bar on a terminal or in a notebook, else lines. Each stage is announced
            on the `scquery` logger with its size either way.
    """
    config = _config(config)
    _check_seed(seed)
    check_labels(adata, label_key, source=source_of(adata, "the reference"), allow_missing=True)
    if encoder is not None and unlabeled is not None:
        raise ScqueryError(
            "Unlabelled data serve pretraining only, and a pretrained encoder was given; give the "
            "unlabelled data to `pretrain` instead, or leave out the encoder."
        )
    if not config.pretrain and (encoder is not None or unlabeled is not None):
        raise ScqueryError(
            "The option pretrain is false, yet a pretrained encoder or unlabelled data (used only for "
            "pretraining) were given; set pretrain to true or leave them out."
        )
    _datasets(unlabeled)
    values = {"layer": layer, "use_raw": use_raw}
    processed, record = _preprocess(adata, config, values, label_key=label_key, species=species)
    cells, classes, y = _labelled(processed, label_key, config)  # before any training
    rows = _device_rows(processed.X)  # pretraining's and fine-tuning's
    if encoder is not None:
        _check_encoder(encoder, record, config)
    elif config.pretrain:
        encoder = _pretrain(processed, record, unlabeled, config, values, seed, verbose, rows=rows)
    model = build_classifier(
        processed.n_vars,
        config.hidden_sizes,
        len(classes),
        activation=config.activation,
        encoder_weights=None if encoder is None else encoder.weights,
        scale=record["scale"],
        seed=seed_for(seed, _CLASSIFIER),
    )
    history = {
        "pretrain": [] if encoder is None else encoder.history,
        "classifier": fit_classifier(
            model,
            processed.X,
            y,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            validation_fraction=config.validation_fraction,
            patience=config.patience,
            class_weight=config.class_weight,
            cells=cells,
            seed=seed,
            rows=rows,
            verbose=verbose,
        ),
    }
    propagated, y_propagated = _propagate(model, processed, label_key, config, rows)
    history["cells"] = {
        "labelled": len(cells),
        "propagated": len(propagated),
        "reference": int(processed.n_obs),
    }
    cells, y = np.concatenate([cells, propagated]), np.concatenate([y, y_propagated])
    reference = processed.obs.iloc[cells]
    obs = pd.DataFrame(
        {
            "label": pd.Categorical(np.asarray(classes)[y], categories=classes),
            "dataset": reference["dataset"].astype(str).to_numpy() if "dataset" in reference else "reference",
            LABEL_SOURCE: label_sources(len(cells) - len(propagated), len(propagated)),
        },
        index=reference.index.copy(),
    ).astype({"dataset": "category"})
    logger.info("embedding the reference: %s cells", f"{len(reference):,}")
    embedding = predict_in_chunks(embedding_model(model), processed.X, cells=cells, rows=rows)
    bundle = Bundle(
        model=model,
        classes=classes,
        preprocess=record,
        reference=ad.AnnData(
            obs=obs,
            obsm={"X_scquery": embedding},
            uns={PROFILES_KEY: type_profiles(processed.X, np.asarray(classes)[y], rows=cells)},
        ),
        label_key=label_key,
        config=config.to_dict(),
        seed=seed,
        history=history,
        model_id=model_digest(model, record["genes"]),
    )
    return with_index(bundle)


def _preprocess(adata, config, values, *, label_key=None, species=None):
    """`fit_preprocess`'s preprocessing of every reference cell, labelled or not, with the configured
    options, on the chosen `values` (`layer`, `use_raw` of `scquery.values.select_values`) and `species`,
    fitted in passes over blocks of rows (`scquery.stream.fit_streamed`): the processed rows of an
    h5ad opened with `backed='r'` stay on disk and are read batch by batch, those of in-memory data
    are held in memory (the same values). The highly variable genes are joined by the
    `config.marker_genes` defining genes of each type of `obs[label_key]`."""
    processed, record = fit_streamed(
        adata,
        **values,
        min_genes=config.min_genes,
        min_cells=config.min_cells,
        max_pct_mito=config.max_pct_mito,
        target_sum=config.target_sum,
        n_top_genes=config.n_top_genes,
        genes=config.genes,
        scale=config.scale,
        species=species,
        labels=None if label_key is None else adata.obs[label_key],
        marker_genes=config.marker_genes,
    )
    logger.info(
        "preprocessing the reference: %s cells × %s genes → %s cells × %s genes%s",
        *(f"{n:,}" for n in (*adata.shape, *processed.X.shape)),
        ", read from disk batch by batch" if processed.X.backed else "",
    )
    if not processed.X.backed:
        processed.X = processed.X.materialize()
    return processed, record


def _labelled(processed, label_key, config):
    """The labelled cells of the cell types large enough to learn (their rows in `processed`, not a
    copy of them), the class names and integer labels."""
    cells = np.flatnonzero(labelled_cells(processed.obs[label_key]))
    labels = processed.obs[label_key].iloc[cells].astype(str)
    sizes = labels.value_counts()
    small = sizes[sizes < config.min_cells_per_class]
    if len(small):
        warnings.warn(
            f"Dropping {len(small)} cell type(s) with fewer than {config.min_cells_per_class} cells: "
            + ", ".join(f"{name} ({n})" for name, n in small.items())
            + "; lower min_cells_per_class to keep them.",
            stacklevel=3,
        )
        keep = ~labels.isin(small.index).to_numpy()
        cells, labels = cells[keep], labels[keep]
    if labels.nunique() < 2:
        raise ScqueryError(
            f"Label column '{label_key}' leaves {labels.nunique()} cell type(s) with at least "
            f"{config.min_cells_per_class} labelled cells passing quality control; a classifier "
            "needs two or more."
        )
    classes = sorted(labels.unique())
    y = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    return cells, classes, y


def _propagate(model, processed, label_key, config, rows):
    """The unlabelled reference cells the classifier labels confidently (`scquery.propagate`):
    their rows in `processed` and class codes (none with `config.propagate` false); `rows`: the
    processed rows held on the device, or None."""
    unlabelled = np.flatnonzero(~labelled_cells(processed.obs[label_key]))
    if not config.propagate or unlabelled.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    probabilities = predict_in_chunks(model, processed.X, cells=unlabelled, rows=rows)
    rows, codes = confident_labels(probabilities, min_probability=config.propagate_min_probability)
    logger.info(
        "labelling the unlabelled reference cells: %s of %s propagated (probability >= %s)",
        f"{rows.size:,}",
        f"{unlabelled.size:,}",
        config.propagate_min_probability,
    )
    return unlabelled[rows], codes


def _device_rows(X):
    """The processed reference's rows held on the device where it is an accelerator with room for
    them (`scquery.batches.device_rows`), else None."""
    rows = device_rows(X)
    if rows is not None:
        held = sum(4 * int(np.prod(weight.shape)) for weight in rows.weights)
        logger.info("training data held on the device: %.2f GB", held / 1e9)
    return rows


def _pretrain(processed, record, unlabeled, config, values, seed, verbose, *, rows):
    """Greedy pretraining on the processed reference's cells and the `unlabeled` data (each one
    processed, and so checked, before any training); `rows`: the reference's rows held on the
    device, None, or 'auto' (`pretrain_greedy`)."""
    X = processed.X
    if not sp.issparse(X) and unlabeled is not None:
        X = X.materialize()  # stacked with the unlabelled cells in memory
    extra = [
        _unlabeled_matrix(select_values(data, **values), record, config) for data in _datasets(unlabeled)
    ]
    if extra:
        X = sp.vstack([X, *extra], format="csr", dtype=np.float32)
        rows = "auto"  # more rows than the reference's
    weights, history, autoencoder = pretrain_greedy(
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
        seed=seed_for(seed, _PRETRAIN),
        rows=rows,
        verbose=verbose,
    )
    return PretrainedEncoder(weights, list(record["genes"]), config.activation, history, autoencoder)


def _datasets(unlabeled):
    if unlabeled is None:
        return []
    datasets = [unlabeled] if isinstance(unlabeled, ad.AnnData) else list(unlabeled)
    for data in datasets:
        if not isinstance(data, ad.AnnData):
            raise ScqueryError(
                f"Unlabelled data must be AnnData objects, got {type(data).__name__}; read files "
                "with scquery.io.read first."
            )
    return datasets


def _unlabeled_matrix(data, record, config):
    """Unlabelled data as pretraining input: the reference's quality control, then processed and
    aligned to its genes like a query."""
    cells = qc_cells(data, min_genes=config.min_genes, max_pct_mito=config.max_pct_mito)
    aligned, _ = apply_preprocess(data[cells], record)
    return aligned.X


def _check_encoder(encoder, record, config):
    """Refuse a pretrained encoder that does not fit this reference's genes and network."""
    problem = None
    if list(encoder.genes) != list(record["genes"]):
        problem = "was pretrained on other genes than this reference's"
    elif encoder.hidden_sizes != list(config.hidden_sizes):
        problem = f"has layers {encoder.hidden_sizes}, the options ask for {list(config.hidden_sizes)}"
    elif encoder.activation != config.activation:
        problem = f"uses activation {encoder.activation!r}, the options ask for {config.activation!r}"
    if problem:
        raise ScqueryError(
            f"The pretrained encoder {problem}; pretrain it again with this reference and options."
        )


def _check_seed(seed):
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ScqueryError(f"The seed must be a non-negative integer, got {seed!r}.")


def _config(config):
    return config if isinstance(config, TrainConfig) else load_train_config(config)
