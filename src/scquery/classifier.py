"""The cell-type classifier: the (pretrained) encoder plus a softmax head, fine-tuned end to end."""

from contextlib import closing, nullcontext

import keras
import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from .batches import RowBatches, SparseBatches, device_rows, iter_dense_chunks
from .callbacks import EpochTimer, StageProgress
from .logs import arrows, logger, resolve_verbose
from .pretrain import ENCODER_PREFIX, FIT_OPTIONS, INPUT_DROPOUT, MIXED_PRECISION, seed_for, stack_encoder

HEAD = "classifier"
#: The second classifier of `config.ensemble_dropout`, a model nested in the first's graph.
WITH_DROPOUT = "classifier_with_dropout"

#: A validation split is held out for early stopping only where it holds this many cells per type on
#: average; with fewer labels every labelled cell trains (for the full `epochs`).
MIN_VALIDATION_PER_CLASS = 3
#: Without a validation split, batches are made small enough for this many updates per epoch (30
#: labelled cells in 256-cell batches would train 50 epochs in 50 steps).
MIN_BATCHES_PER_EPOCH = 10


def build_classifier(n_genes, n_classes, config, *, encoder_weights=None, scale=None, seed):
    """The stacked encoder (`scquery.pretrain.stack_encoder`: optional gene scaling, dropout of the
    input genes at `config.dropout` while training, then the dense layers `encoder_0 … encoder_{L-1}`
    of `config.hidden_sizes` and `config.activation`), then the softmax layer `classifier`, as one
    functional model.

    With `config.ensemble_dropout`, a second such classifier, `WITH_DROPOUT` (a model of its own,
    nested), drops its input genes at that rate while training, and the model's output is the mean
    of the two classifiers' probabilities (`branches` gives each to train); the embedding stays the
    first's.

    `encoder_weights` (`[kernel, bias]` per layer, as `pretrain_greedy` returns) initialise the
    encoder; without them its layers start from Glorot-uniform weights seeded by `seed`, as does
    the head (the second classifier's seeds are the first's).
    """

    def stacked(dropout, name):
        encoder = stack_encoder(
            n_genes,
            config.hidden_sizes,
            activation=config.activation,
            scale=scale,
            weights=encoder_weights,
            seed=seed,
            dropout=dropout,
        )
        head = keras.layers.Dense(
            n_classes,
            activation="softmax",
            kernel_initializer=keras.initializers.GlorotUniform(seed_for(seed, len(config.hidden_sizes))),
            name=HEAD,
        )
        return keras.Model(encoder.input, head(encoder.output), name=name)

    first = stacked(config.dropout, "scquery")
    if not config.ensemble_dropout:
        return first
    second = stacked(config.ensemble_dropout, WITH_DROPOUT)
    mean = keras.layers.Average(name="mean_probabilities")([first.output, second(first.input)])
    return keras.Model(first.input, mean, name="scquery")


def branches(model):
    """The classifiers of `model` to fine-tune, by name (`HEAD`, and `WITH_DROPOUT` where it has
    one): each a model of `model`'s own layers, so that training it trains `model`."""
    if model.get_layer(index=-1).name == HEAD:
        return {HEAD: model}
    first = keras.Model(model.input, model.get_layer(HEAD).output, name="scquery")
    return {HEAD: first, WITH_DROPOUT: model.get_layer(WITH_DROPOUT)}


def fit_classifier(model, X, y, config, *, cells=None, seed, rows="auto", verbose="auto"):
    """Fine-tune `model` on CSR `X` and integer labels `y` with the options of `config` (a
    `scquery.config.TrainConfig`); returns the Keras history as a dict.

    A stratified `validation_fraction` of the cells drives early stopping (`patience`), which
    restores the best weights, where it holds `MIN_VALIDATION_PER_CLASS` cells per type on average;
    with fewer labels every cell trains for `epochs` epochs, in batches of at most
    1/`MIN_BATCHES_PER_EPOCH` of the cells (a tenth of a few labels is too few to stop on, and too
    many to lose); otherwise batches hold `batch_size` cells. With `class_weight`, classes are
    weighted inversely to their size ('balanced'). With `cells` (row indices), only those rows of
    `X` are used, without copying them, and `y` holds their labels. `seed` seeds the split and the
    batch order. The stage is announced on the `scquery` logger; `verbose` shows its epochs
    (`scquery.callbacks.StageProgress`; 'auto': `scquery.logs.resolve_verbose`). The history
    records, with early stopping, the epoch whose weights were kept (`kept_epoch`, from 1).

    `rows`: X's rows held on the device (`scquery.batches.device_rows(X)`), None to densify the
    batches on the host, or 'auto' (held on an accelerator with room for them). With
    `mixed_precision`, a copy of `model` computing in bfloat16 (`MIXED_PRECISION`; its softmax
    head in float32) trains, and `model` takes its weights: `model` itself stays as it was built.
    """
    epochs, batch_size, validation_fraction = config.epochs, config.batch_size, config.validation_fraction
    y = np.asarray(y)
    rows = device_rows(X) if isinstance(rows, str) else rows  # "auto"
    Batches = SparseBatches if rows is None else RowBatches
    cells = np.arange(X.shape[0]) if cells is None else np.asarray(cells)
    label = (
        "fine-tuning the second classifier" if model.name == WITH_DROPOUT else "fine-tuning the classifier"
    )
    callbacks, validation, stopper = [EpochTimer()], None, None
    train_rows = np.arange(len(y))
    # At least one validation cell per class, so that rare classes can be stratified.
    n_classes = len(np.unique(y))
    n_validation = max(int(np.ceil(validation_fraction * len(y))), n_classes)
    if validation_fraction > 0 and n_validation >= MIN_VALIDATION_PER_CLASS * n_classes:
        train_rows, validation_rows = train_test_split(
            train_rows, test_size=n_validation, stratify=y, random_state=seed
        )
        train_rows.sort()
        validation_rows.sort()
        validation = Batches(
            X,
            y[validation_rows],
            cells=cells[validation_rows],
            batch_size=batch_size,
            shuffle=False,
            seed=seed,
        )
        if config.average_epochs:  # early stopping sees, and keeps, the averaged weights
            callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
        callbacks.append(stopper)
    else:
        batch_size = max(1, min(batch_size, len(y) // MIN_BATCHES_PER_EPOCH))
    weights = None
    if config.class_weight:
        present = np.unique(y[train_rows])
        balanced = compute_class_weight("balanced", classes=present, y=y[train_rows])
        weights = dict(zip(present.tolist(), balanced.tolist(), strict=True))
    batches = Batches(X, y[train_rows], cells=cells[train_rows], batch_size=batch_size, seed=seed)
    widths = [X.shape[1], *(layer.units for layer in model.layers if layer.name.startswith(ENCODER_PREFIX))]
    schedule = f"{epochs} epochs"
    if validation is not None:
        schedule = f"up to {epochs} epochs ({len(y) - len(train_rows):,} cells held out for early stopping)"
    size = f"{arrows(widths)} → {model.get_layer(HEAD).units} cell types"
    logger.info("%s: %s, %s cells, %s", label, size, f"{len(y):,}", schedule)
    callbacks.insert(1, StageProgress(label, verbose=resolve_verbose(verbose), size=size))  # after the timer
    fed = training_model(model, rows=rows, mixed_precision=config.mixed_precision)
    fed.compile(
        keras.optimizers.Adam(
            config.learning_rate,
            use_ema=config.average_epochs > 0,
            ema_momentum=1 - 1 / max(1.0, config.average_epochs * len(batches)),
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        **FIT_OPTIONS,
    )
    with closing(batches), closing(validation) if validation is not None else nullcontext():
        fitted = fed.fit(
            batches,
            validation_data=validation,
            epochs=epochs,
            class_weight=weights,
            callbacks=callbacks,
            shuffle=False,  # the batches shuffle themselves (seeded), Keras would use the global state
            verbose=0,
        )
    if config.mixed_precision:
        model.set_weights(fed.get_weights())
    history = {key: [float(v) for v in values] for key, values in fitted.history.items()}
    if stopper is not None:  # the epoch whose weights early stopping restored: the model kept
        history["kept_epoch"] = int(stopper.best_epoch) + 1
    return history


def training_model(model, *, rows=None, mixed_precision=False):
    """The model `fit_classifier` trains for the classifier `model`: `model` itself, or with
    `mixed_precision` a copy computing in bfloat16; fed row indices, its first layer `rows` (a
    `scquery.layers.SparseRows`), where the data are held on the device. Its weights (`get_weights`,
    what early stopping keeps and restores) are those of the classifier, not the data's."""
    trained = _mixed_copy(model) if mixed_precision else model
    return trained if rows is None else _OnRows(trained, rows)


def _mixed_copy(model):
    """A copy of the classifier `model`, its weights included, whose layers compute in bfloat16
    but for the softmax head and the dropout of the input genes."""

    def clone(layer):
        policy = "float32" if layer.name in (HEAD, INPUT_DROPOUT) else MIXED_PRECISION
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


class _OnRows(keras.Model):
    """The training model of `model` on the device-held `rows` (a `scquery.layers.SparseRows`):
    fed row indices, it densifies them and runs `model`. Its weights (what early stopping keeps
    and restores) are `model`'s alone, not the data's."""

    def __init__(self, model, rows):
        indices = keras.Input((), dtype="int32", name="row_indices")
        super().__init__(indices, model(rows(indices)), name=f"{model.name}_on_rows")
        self.fed = model

    def get_weights(self):
        return self.fed.get_weights()

    def set_weights(self, weights):
        self.fed.set_weights(weights)


def embedding_model(model):
    """The sub-model from the input to the last encoder layer, whose output is the embedding."""
    encoders = [layer for layer in model.layers if layer.name.startswith(ENCODER_PREFIX)]
    return keras.Model(model.input, encoders[-1].output, name="scquery_embedding")


def predict_in_chunks(model, X, *, chunk_size=8192, cells=None, rows=None, fill=None):
    """`model`'s outputs for the rows of CSR `X` (or its rows `cells`), densifying `chunk_size` rows
    at a time: a float32 array, or a list of them for a model of several outputs, each made once
    and filled chunk by chunk (no list of parts, no copy of the whole). With `rows`, X's rows held
    on the device (`scquery.batches.device_rows`), the chunks are densified there. `fill` (a function
    of a dense chunk, densified on the host only: `scquery.imputation.Imputer.fill`) gives each chunk
    the genes the data lack, so X stays sparse."""
    n = X.shape[0] if cells is None else len(cells)
    arrays = [np.empty((n, *output.shape[1:]), dtype=np.float32) for output in model.outputs]
    if rows is None:
        chunks = iter_dense_chunks(X, chunk_size, cells=cells)
        if fill is not None:
            chunks = (fill(chunk) for chunk in chunks)
    else:
        if fill is not None:
            raise ValueError("fill applies to chunks densified on the host, not to rows held on the device")
        model = _OnRows(model, rows)
        indices = np.arange(n) if cells is None else np.asarray(cells)
        chunks = (indices[i : i + chunk_size].astype(np.int32) for i in range(0, n, chunk_size))
    start = 0
    for chunk in chunks:
        parts = model(chunk, training=False)
        for array, part in zip(arrays, parts if len(arrays) > 1 else [parts], strict=True):
            array[start : start + len(chunk)] = keras.ops.convert_to_numpy(part)
        start += len(chunk)
    return arrays if len(arrays) > 1 else arrays[0]
