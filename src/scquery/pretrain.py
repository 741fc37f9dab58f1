"""The stacked encoder, and its greedy layer-wise pretraining as tied-weight denoising autoencoders
(Vincent et al., 2010).

`stack_encoder` is the one place the encoder is built: pretraining stacks the layers it has trained
with it, and the classifier (`scquery.classifier.build_classifier`) puts its softmax head on it.
Randomness is seeded locally (initializers, noise, batch order), never globally: `seed_for` derives
one independent seed per random stream from the run's seed.
"""

import json
from contextlib import closing
from dataclasses import dataclass, field

import keras
import numpy as np

from .batches import RowBatches, SparseBatches, device_rows
from .callbacks import EpochTimer, StageProgress
from .layers import DenseLayerAutoencoder
from .logs import arrows, logger, resolve_verbose

#: Names of the encoder's dense layers (`encoder_0 …`); the last one's output is the embedding.
ENCODER_PREFIX = "encoder_"
#: Batches used to measure a layer's reconstruction loss before its training starts.
_INITIAL_LOSS_BATCHES = 20
#: Keras compile options for throughput, shared by pretraining and fine-tuning. Batches run 32 to a
#: compiled call (`steps_per_execution`: the per-step Python and dispatch cost is paid once per 32);
#: XLA (`jit_compile`) is left to Keras's default, off on TensorFlow, where it measured 10-15 times
#: slower on CPU (benchmarks/RESULTS.md, "Training throughput").
FIT_OPTIONS = {"steps_per_execution": 32}
#: Keys of the random streams of `pretrain_greedy`, per stage: initial weights, noise, batch order.
_INIT, _NOISE, _ORDER = 0, 1, 2
#: The name of the classifier's dropout of its input genes (`stack_encoder`'s `dropout`); it draws its
#: mask in float32 in every precision, so mixed-precision training drops the same genes.
INPUT_DROPOUT = "input_dropout"
#: The arrays of `PretrainedEncoder.autoencoder` in a `save_encoder` file.
_AUTOENCODER_ARRAYS = ("autoencoder_kernel", "autoencoder_encoder_bias", "autoencoder_decoder_bias")
#: The Keras dtype policy of training in mixed precision: bfloat16 computations, float32 weights
#: (no loss scaling needed, unlike float16).
MIXED_PRECISION = "mixed_bfloat16"


def seed_for(seed, *keys):
    """An int seed (below 2**31) for the random stream named by the non-negative ints `keys` of a
    run seeded with `seed`; different keys give independent streams (`numpy.random.SeedSequence`)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0] >> 1)


@dataclass
class PretrainedEncoder:
    """Encoder weights from pretraining, with what is needed to check that they fit a model.

    Attributes:
        weights: `[kernel, bias]` per encoder layer (numpy arrays).
        genes: the genes of the encoder's input, in order.
        activation: the hidden layers' activation.
        history: one dict per pretraining stage (see `pretrain_greedy`).
        autoencoder: the first stage's tied autoencoder as it was trained, `[kernel, encoder bias,
            decoder bias]` (`scquery.reconstruction`); None for an encoder saved without it.
    """

    weights: list
    genes: list[str]
    activation: str
    history: list = field(default_factory=list)
    autoencoder: list | None = None

    @property
    def hidden_sizes(self):
        return [int(kernel.shape[1]) for kernel, _ in self.weights]


def pretrain_greedy(X, config, *, scale=None, seed, rows="auto", verbose="auto"):
    """Pretrain one tied denoising autoencoder per hidden layer, each on the codes of the ones before.

    The options are those of `config` (a `scquery.config.TrainConfig`): layer i is a
    `DenseLayerAutoencoder([hidden_sizes[i]])` fitted for `pretrain_epochs` epochs, in batches of
    `batch_size`, to reconstruct its clean input (the data embedded by layers 0 … i-1) from a
    corrupted copy: masking noise (`noise='mask'`, a fraction `noise_level` of inputs set to zero)
    or Gaussian noise (`noise='gaussian'`, standard deviation `noise_level`). With
    `finetune_autoencoder`, the stacked autoencoder is then trained end to end. `X` is a sparse CSR
    matrix (or a backed h5ad matrix), streamed in mini-batches; `scale` (the preprocessing record's
    gene means and standard deviations) standardizes each batch first; `seed` seeds every random
    stream (`seed_for`). Each stage is announced on the `scquery` logger; `verbose` shows its epochs
    (`scquery.callbacks.StageProgress`; 'auto': `scquery.logs.resolve_verbose`).

    `rows`: X's rows held on the device (`scquery.batches.device_rows(X)`: each batch is densified
    there, the host sends row indices), None to densify the batches on the host, or 'auto' (held
    on an accelerator with room for them). With `mixed_precision`, the layers compute in
    bfloat16 (`MIXED_PRECISION`); the weights stay float32.

    Returns:
        `weights`, a list of `[kernel, bias]` per layer (the encoder); `history`, one dict per
        stage with its number of `cells`, the loss before training (`initial_loss`), after each
        epoch (`loss`), each epoch's duration (`seconds`) and CPU time (`cpu_seconds`); and
        `autoencoder`, the first stage's autoencoder as it was trained (`[kernel, encoder bias,
        decoder bias]`).
    """
    verbose = resolve_verbose(verbose)
    rows = device_rows(X) if isinstance(rows, str) else rows  # "auto"
    dtype = MIXED_PRECISION if config.mixed_precision else None
    weights, decoder_biases, history = [], [], []
    hidden_sizes, activation = config.hidden_sizes, config.activation
    epochs, batch_size, learning_rate = config.pretrain_epochs, config.batch_size, config.learning_rate
    widths = [X.shape[1], *hidden_sizes]
    for i, width in enumerate(hidden_sizes):
        label, size = f"pretraining layer {i + 1}/{len(hidden_sizes)}", arrows(widths[i : i + 2])
        logger.info("%s: %s, %d epochs", label, size, epochs)
        progress = StageProgress(label, verbose=verbose, size=size)
        dae = _autoencoder([width], config, seed, stage=i, dtype=dtype)
        below = stack_encoder(
            X.shape[1],
            hidden_sizes[:i],
            activation=activation,
            seed=seed,
            scale=scale,
            weights=weights,
            dtype=dtype,
        )
        batches = _batches(X, rows, batch_size, seed_for(seed, i, _ORDER))
        stage = _fit_autoencoder(
            dae, below, batches, epochs, learning_rate, name=f"layer_{i}", progress=progress, rows=rows
        )
        history.append({"stage": f"layer_{i}", "width": int(width), "cells": int(X.shape[0]), **stage})
        weights.append([keras.ops.convert_to_numpy(w) for w in (dae.kernels[0], dae.encoder_biases[0])])
        decoder_biases.append(keras.ops.convert_to_numpy(dae.decoder_biases[0]))
    if config.finetune_autoencoder:
        last = len(hidden_sizes)
        stacked = _autoencoder(hidden_sizes, config, seed, stage=last, dtype=dtype)
        stacked.build((None, X.shape[1]))
        values = [w[0] for w in weights] + [w[1] for w in weights] + decoder_biases[::-1]
        for variable, value in zip(
            stacked.kernels + stacked.encoder_biases + stacked.decoder_biases, values, strict=True
        ):
            variable.assign(value)
        label = "fine-tuning the stacked autoencoder"
        logger.info("%s: %s, %d epochs", label, arrows(widths), epochs)
        progress = StageProgress(label, verbose=verbose, size=arrows(widths))
        scaling = stack_encoder(X.shape[1], [], activation=activation, seed=seed, scale=scale, dtype=dtype)
        batches = _batches(X, rows, batch_size, seed_for(seed, last, _ORDER))
        stage = _fit_autoencoder(
            stacked, scaling, batches, epochs, learning_rate, name="stacked", progress=progress, rows=rows
        )
        history.append(
            {"stage": "stacked", "width": int(hidden_sizes[-1]), "cells": int(X.shape[0]), **stage}
        )
        weights = [
            [keras.ops.convert_to_numpy(k), keras.ops.convert_to_numpy(b)]
            for k, b in zip(stacked.kernels, stacked.encoder_biases, strict=True)
        ]
    return weights, history, [*weights[0], decoder_biases[0]]


def _autoencoder(widths, config, seed, *, stage, dtype=None):
    level = config.noise_level
    corruption = {"dropout": level} if config.noise == "mask" else {"noise_stddev": level}
    return DenseLayerAutoencoder(
        list(widths),
        activation=config.activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed_for(seed, stage, _INIT)),
        seed=seed_for(seed, stage, _NOISE),
        dtype=dtype,
        **corruption,
    )


def _batches(X, rows, batch_size, seed):
    """A stage's batches: row indices for a model holding `rows` on the device, else dense rows."""
    return (SparseBatches if rows is None else RowBatches)(X, batch_size=batch_size, seed=seed)


class _Denoising(keras.Model):
    """The training model of one denoising stage: its outputs are the clean input (the data through
    the frozen layers before the stage) and the autoencoder's reconstruction of it, and its loss
    compares the two, so that a batch carries the data only (`SparseBatches` with `y=None`) and the
    frozen layers run compiled with the training step."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        clean, reconstruction = y_pred
        return super().compute_loss(x, clean, reconstruction, sample_weight, training=training)


def denoising_model(dae, n_genes, below=None, *, rows=None, name="dae"):
    """The model that trains the autoencoder `dae` on `n_genes` inputs to reconstruct their codes
    through the frozen model `below` (None: the inputs themselves), fed batches without targets:
    dense rows, or with `rows` (a `scquery.layers.SparseRows`, held on the device) row indices."""
    inputs = keras.Input((n_genes,)) if rows is None else keras.Input((), dtype="int32")
    clean = inputs if rows is None else rows(inputs)
    if below is not None:
        below.trainable = False
        clean = below(clean)
    return _Denoising(inputs, [clean, dae(clean)], name=name)


def _fit_autoencoder(dae, below, batches, epochs, learning_rate, *, name, progress, rows=None):
    """Fit `dae` to reconstruct the codes of the frozen model `below` (None: the data themselves)."""
    model = denoising_model(dae, batches.X.shape[1], below, rows=rows, name=f"dae_{name}")
    model.compile(keras.optimizers.Adam(learning_rate), loss="mse", **FIT_OPTIONS)
    steps = min(len(batches), _INITIAL_LOSS_BATCHES)
    # The batches shuffle themselves (seeded); Keras's own shuffling would draw from the global state.
    callbacks = [EpochTimer(), progress]
    with closing(batches):
        initial = model.evaluate(batches, steps=steps, verbose=0)
        fitted = model.fit(batches, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=0)
    return {
        "initial_loss": float(initial),
        "loss": [float(v) for v in fitted.history["loss"]],
        "seconds": [float(v) for v in fitted.history["seconds"]],
        "cpu_seconds": [float(v) for v in fitted.history["cpu_seconds"]],
    }


def scaling_layer(scale, *, dtype=None):
    """A `Normalization` layer standardizing genes with the record's `scale` statistics."""
    std = np.asarray(scale["std"], dtype=np.float32)
    return keras.layers.Normalization(mean=scale["mean"], variance=std**2, name="scale", dtype=dtype)


def stack_encoder(
    n_genes, hidden_sizes, *, activation, seed, scale=None, weights=None, dtype=None, dropout=0.0
):
    """The stacked encoder: a functional `keras.Model` from the input `expression` (`n_genes`
    values) through gene scaling (a `Normalization` layer `scale`, with the preprocessing record's
    `scale` statistics) and, with a `dropout` rate, a `Dropout` layer `INPUT_DROPOUT` (active in
    training only; seeded by `seed_for(seed, len(hidden_sizes) + 1, _NOISE)`) to the dense layers
    `encoder_0 … encoder_{L-1}` of widths `hidden_sizes` and `activation`.

    Layer i holds `weights[i]` (`[kernel, bias]`, as `pretrain_greedy` returns them) where given,
    else Glorot-uniform weights seeded by `seed_for(seed, i)`. Returns None when there is nothing
    to apply (no layer and no scaling). `dtype`: the layers' Keras dtype policy (None: the default).
    """
    weights = list(weights or [])
    if len(weights) > len(hidden_sizes):
        raise ValueError(f"{len(weights)} layers of weights for {len(hidden_sizes)} encoder layers.")
    if not hidden_sizes and scale is None:
        return None
    inputs = keras.Input((n_genes,), name="expression")
    x = inputs if scale is None else scaling_layer(scale, dtype=dtype)(inputs)
    if dropout:
        noise = seed_for(seed, len(hidden_sizes) + 1, _NOISE)
        x = keras.layers.Dropout(dropout, seed=noise, name=INPUT_DROPOUT)(x)  # float32: the same mask
    for i, width in enumerate(hidden_sizes):
        layer = keras.layers.Dense(
            int(width),
            activation=activation,
            kernel_initializer=keras.initializers.GlorotUniform(seed_for(seed, i)),
            name=f"{ENCODER_PREFIX}{i}",
            dtype=dtype,
        )
        x = layer(x)
        if i < len(weights):
            layer.set_weights([np.asarray(w) for w in weights[i]])
    return keras.Model(inputs, x, name="encoder")


def save_encoder(path, encoder: PretrainedEncoder):
    """Write a `PretrainedEncoder` to an `.npz` file (no pickle: arrays, names and JSON text)."""
    arrays = {
        "genes": np.asarray(encoder.genes, dtype=str),
        "activation": np.asarray(encoder.activation),
        "history": np.asarray(json.dumps(encoder.history)),
    }
    for i, (kernel, bias) in enumerate(encoder.weights):
        arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel, bias
    if encoder.autoencoder is not None:
        arrays.update(zip(_AUTOENCODER_ARRAYS, encoder.autoencoder, strict=True))
    np.savez(path, **arrays)


def load_encoder(path) -> PretrainedEncoder:
    """The `PretrainedEncoder` written by `save_encoder`."""
    with np.load(path, allow_pickle=False) as arrays:
        n_layers = sum(name.startswith("kernel_") for name in arrays.files)
        return PretrainedEncoder(
            weights=[[arrays[f"kernel_{i}"], arrays[f"bias_{i}"]] for i in range(n_layers)],
            genes=arrays["genes"].tolist(),
            activation=str(arrays["activation"]),
            history=json.loads(str(arrays["history"])),
            autoencoder=[arrays[name] for name in _AUTOENCODER_ARRAYS]
            if _AUTOENCODER_ARRAYS[0] in arrays.files
            else None,
        )
