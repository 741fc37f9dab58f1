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

import dataclasses
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .batches import device_rows
from .bundle import Bundle, model_digest, with_index
from .classifier import branches, build_classifier, embedding_model, fit_classifier, predict_in_chunks
from .config import TrainConfig, load_train_config
from .errors import ScqueryError
from .imputation import IMPUTER_KEY, imputer_record
from .labels import check_labels, labelled_cells
from .logs import logger, without_retracing_warnings
from .options import InputOptions, check
from .orthologs import detect_species
from .placement import data_parallel
from .preprocessing.align import apply_record, reference_species
from .preprocessing.fit import fit_reference, qc_cells
from .pretrain import PretrainedEncoder, pretrain_greedy, seed_for
from .profiles import PROFILES_KEY, type_profiles
from .propagate import LABEL_SOURCE, confident_labels, label_sources
from .provenance import source_of
from .values import select_values

#: Keys of the random streams of a training run (see `scquery.pretrain.seed_for`).
_PRETRAIN, _CLASSIFIER = 1, 2


@without_retracing_warnings
def pretrain(
    adata: ad.AnnData,
    *,
    label_key: str | None = None,
    config: TrainConfig | dict | str | None = None,
    unlabeled: ad.AnnData | list[ad.AnnData] | None = None,
    seed: int = 0,
    layer: str | None = None,
    use_raw: bool = False,
    verbose: int | str = "auto",
) -> PretrainedEncoder:
    """Preprocess the reference `adata` as `train` does and pretrain the encoder greedily on all
    its cells and the `unlabeled` data; `train(..., encoder=...)` goes on from the result. The
    labels (`obs[label_key]`, the same as `train`'s) serve only to choose the genes: each type's
    defining genes join the highly variable ones (`config.marker_genes`). `adata` and `unlabeled`
    are not modified."""
    config = _config(config, seed)
    if label_key is not None:
        check_labels(adata, label_key, source=source_of(adata, "the reference"), allow_missing=True)
    values = {"layer": layer, "use_raw": use_raw}
    with data_parallel(config.devices):
        X, _, record = _preprocess(adata, config, values, label_key=label_key)
        return _pretrain(X, record, unlabeled, config, values, verbose, rows="auto")


@without_retracing_warnings
def train(
    adata: ad.AnnData,
    *,
    label_key: str,
    config: TrainConfig | dict | str | None = None,
    unlabeled: ad.AnnData | list[ad.AnnData] | None = None,
    encoder: PretrainedEncoder | None = None,
    seed: int = 0,
    layer: str | None = None,
    use_raw: bool = False,
    species: str | None = None,
    verbose: int | str = "auto",
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
    whole (`scquery.preprocessing`): memory does not grow with its matrix, and the model is the one its data
    in memory give. With `config.devices` other than 1 (JAX backend), or within a
    `keras.distribution.DataParallel(...).scope()` of the caller's, each batch is split over the
    devices (`scquery.placement.data_parallel`); with `config.mixed_precision` the layers compute in
    bfloat16 (docs/SCALING.md).

    Args:
        label_key: the obs column of cell types; cells without one (NaN or empty) serve pretraining
            and propagation only, and a column labelling no cell is an error.
        config: a `TrainConfig`, a dict or YAML path of options (`scquery.config.load_train_config`).
        unlabeled: AnnData (or a list of them) of more cells for pretraining only, in any values
            and genes a query may have (taken from the same `layer` or `.raw`): each is filtered
            (the reference's quality control), normalized and aligned to the reference's genes
            like a query (`scquery.preprocessing.align.apply_record`; refused below
            `config.unlabeled_min_overlap` of the reference's genes); one whose gene names look
            like another species than the reference's is mapped through the built-in orthologues.
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
    config = _config(config, seed)
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
    if config.rebuild_missing and not config.pretrain:
        raise ScqueryError(
            "The option rebuild_missing keeps the pretrained autoencoder, yet pretrain is false; set "
            "pretrain to true or rebuild_missing to false."
        )
    _datasets(unlabeled)
    values = {"layer": layer, "use_raw": use_raw}
    with data_parallel(config.devices):  # 1 device: the caller's own distribution, if any, stays
        bundle = _train(adata, label_key, config, unlabeled, encoder, values, species, verbose)
    return with_index(bundle)


def _train(adata, label_key, config, unlabeled, encoder, values, species, verbose):
    """`train`'s work once its inputs are checked: the bundle, without its index."""
    X, obs, record = _preprocess(adata, config, values, label_key=label_key, species=species)
    cells, classes, y = _labelled(obs, label_key, config)  # before any training
    rows = _device_rows(X)  # pretraining's and fine-tuning's
    if encoder is not None:
        _check_encoder(encoder, record, config)
    elif config.pretrain:
        encoder = _pretrain(X, record, unlabeled, config, values, verbose, rows=rows)
    model = build_classifier(
        X.shape[1],
        len(classes),
        config,
        encoder_weights=None if encoder is None else encoder.weights,
        scale=record["scale"],
        seed=seed_for(config.seed, _CLASSIFIER),
    )
    history = {"pretrain": [] if encoder is None else encoder.history}
    for name, classifier in branches(model).items():
        history[name] = fit_classifier(
            classifier, X, y, config, cells=cells, seed=config.seed, rows=rows, verbose=verbose
        )
    propagated, y_propagated = _propagate(model, X, obs, label_key, config, rows)
    history["cells"] = {
        "labelled": len(cells),
        "propagated": len(propagated),
        "reference": int(X.shape[0]),
    }
    cells, y = np.concatenate([cells, propagated]), np.concatenate([y, y_propagated])
    reference = obs.iloc[cells]
    obs = pd.DataFrame(
        {
            "label": pd.Categorical(np.asarray(classes)[y], categories=classes),
            "dataset": reference["dataset"].astype(str).to_numpy() if "dataset" in reference else "reference",
            LABEL_SOURCE: label_sources(len(cells) - len(propagated), len(propagated)),
        },
        index=reference.index.copy(),
    ).astype({"dataset": "category"})
    logger.info("embedding the reference: %s cells", f"{len(reference):,}")
    embedding = predict_in_chunks(embedding_model(model), X, cells=cells, rows=rows)
    return Bundle(
        model=model,
        classes=classes,
        preprocess=record,
        reference=ad.AnnData(
            obs=obs,
            obsm={"X_scquery": embedding},
            uns={
                PROFILES_KEY: type_profiles(X, np.asarray(classes)[y], rows=cells),
                **_imputer(encoder, config),
            },
        ),
        label_key=label_key,
        config=config.to_dict(),
        seed=config.seed,
        history=history,
        model_id=model_digest(model, record["genes"]),
    )


def _imputer(encoder, config):
    """The bundle reference's `uns` entry of the first stage's autoencoder (`scquery.imputation`), with
    `config.rebuild_missing` where the model was pretrained."""
    keep = config.rebuild_missing and encoder is not None
    record = imputer_record(encoder.autoencoder, encoder.activation) if keep else None
    return {} if record is None else {IMPUTER_KEY: record}


def _preprocess(adata, config, values, *, label_key=None, species=None):
    """The preprocessing of every reference cell, labelled or not, with the configured options, on
    the chosen `values` (`layer`, `use_raw` of `scquery.values.select_values`) and `species`, fitted
    in passes over blocks of rows (`scquery.preprocessing.fit.fit_reference`): the processed rows of
    an h5ad opened with `backed='r'` stay on disk and are read batch by batch, those of in-memory
    data are held in memory (the same values). The highly variable genes are joined by the
    `config.marker_genes` defining genes of each type of `obs[label_key]`. Returns the processed
    rows, the kept cells' annotations and the record."""
    cells = select_values(adata, **values, on_disk=True)
    labels = None if label_key is None else cells.obs[label_key]
    X, kept, record = fit_reference(cells, config, species=species, labels=labels)
    logger.info(
        "preprocessing the reference: %s cells × %s genes → %s cells × %s genes%s",
        *(f"{n:,}" for n in (*adata.shape, *X.shape)),
        "" if sp.issparse(X) else ", read from disk batch by batch",
    )
    return X, cells.obs.iloc[kept], record


def _labelled(obs, label_key, config):
    """The labelled cells of the cell types large enough to learn (their rows in the processed
    reference, whose annotations are `obs`), the class names and integer labels."""
    cells = np.flatnonzero(labelled_cells(obs[label_key]))
    labels = obs[label_key].iloc[cells].astype(str)
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


def _propagate(model, X, obs, label_key, config, rows):
    """The unlabelled reference cells the classifier labels confidently (`scquery.propagate`):
    their rows in the processed reference `X` (annotations `obs`) and class codes (none with
    `config.propagate` false); `rows`: X's rows held on the device, or None."""
    unlabelled = np.flatnonzero(~labelled_cells(obs[label_key]))
    if not config.propagate or unlabelled.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    probabilities = predict_in_chunks(model, X, cells=unlabelled, rows=rows)
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


def _pretrain(X, record, unlabeled, config, values, verbose, *, rows):
    """Greedy pretraining on the processed reference's cells `X` and the `unlabeled` data (each one
    processed, and so checked, before any training); `rows`: X's rows held on the device, None,
    or 'auto' (`pretrain_greedy`)."""
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
        config,
        scale=record["scale"],
        seed=seed_for(config.seed, _PRETRAIN),
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


def _unlabeled_matrix(cells, record, config):
    """Unlabelled data (`Cells`) as pretraining input: the reference's quality control, then
    processed and aligned to its genes like a query, holding at least `config.unlabeled_min_overlap`
    of them; data whose gene names look like another species than the reference's are mapped through
    the built-in orthologues (a query's `species`)."""
    kept = qc_cells(cells, config)
    passing = dataclasses.replace(cells, X=cells.X[kept], obs=cells.obs.iloc[kept])
    found, reference = detect_species(cells.genes), reference_species(record)
    species = found if found and reference and found != reference else None
    if species:
        logger.info(
            "%s: its gene names look %s; mapped onto the %s reference's genes through the built-in "
            "orthologues",
            cells.source,
            species,
            reference,
        )
    inputs = InputOptions(species=species, min_overlap=config.unlabeled_min_overlap)
    return apply_record(passing, record, inputs, option="unlabeled_min_overlap")[0]


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


def _config(config, seed):
    """The `TrainConfig` of `config` (one, a dict or a YAML path: `load_train_config`) and `seed`,
    checked."""
    config = config if isinstance(config, TrainConfig) else load_train_config(config)
    return check(dataclasses.replace(config, seed=seed))
