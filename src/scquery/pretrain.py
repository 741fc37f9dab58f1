"""Greedy layer-wise pretraining of tied-weight denoising autoencoders (Vincent et al., 2010)."""

import keras
import numpy as np

from .batches import SparseBatches
from .callbacks import EpochTimer, StageProgress
from .layers import DenseLayerAutoencoder
from .logs import arrows, logger, resolve_verbose

#: Batches used to measure a layer's reconstruction loss before its training starts.
_INITIAL_LOSS_BATCHES = 20


def pretrain_greedy(
    X,
    hidden_sizes,
    *,
    activation="tanh",
    noise="mask",
    noise_level=0.2,
    epochs=10,
    batch_size=256,
    learning_rate=1e-3,
    finetune_autoencoder=False,
    scale=None,
    seed=0,
    verbose="auto",
):
    """Pretrain one tied denoising autoencoder per hidden layer, each on the codes of the ones before.

    Layer i is a `DenseLayerAutoencoder([hidden_sizes[i]])` fitted to reconstruct its clean input (the
    data embedded by layers 0 … i-1) from a corrupted copy: masking noise (`noise='mask'`, a fraction
    `noise_level` of inputs set to zero) or Gaussian noise (`noise='gaussian'`, standard deviation
    `noise_level`). With `finetune_autoencoder`, the stacked autoencoder is then trained end to end.
    `X` is a sparse CSR matrix (or a backed h5ad matrix), streamed in mini-batches; `scale` (the
    preprocessing record's gene means and standard deviations) standardizes each batch first.
    `verbose` as in `scquery.callbacks.StageProgress` ('auto': `scquery.logs.resolve_verbose`).

    Returns:
        `weights`, a list of `[kernel, bias]` per layer (the encoder), and `history`, one dict per
        stage with the loss before training (`initial_loss`), after each epoch (`loss`) and each
        epoch's duration (`seconds`).
    """
    corruption = {"dropout": noise_level} if noise == "mask" else {"noise_stddev": noise_level}
    verbose = resolve_verbose(verbose)
    weights, decoder_biases, history = [], [], []
    encoder = stack_encoder(X.shape[1], [], scale=scale)
    widths = [X.shape[1], *hidden_sizes]
    for i, width in enumerate(hidden_sizes):
        label = f"pretraining layer {i + 1}/{len(hidden_sizes)}"
        logger.info("%s: %s, %d epochs", label, arrows(widths[i : i + 2]), epochs)
        dae = DenseLayerAutoencoder([width], activation=activation, seed=seed + i, **corruption)
        transform = _frozen(encoder) if encoder.layers else None
        batches = SparseBatches(X, batch_size=batch_size, seed=seed + i, transform=transform)
        stage = _fit_autoencoder(dae, batches, epochs, learning_rate, verbose, name=f"layer_{i}", label=label)
        history.append({"stage": f"layer_{i}", "width": int(width), **stage})
        weights.append([keras.ops.convert_to_numpy(w) for w in (dae.kernels[0], dae.encoder_biases[0])])
        decoder_biases.append(keras.ops.convert_to_numpy(dae.decoder_biases[0]))
        encoder = stack_encoder(X.shape[1], weights, activation=activation, scale=scale)
    if finetune_autoencoder:
        stacked = DenseLayerAutoencoder(
            list(hidden_sizes), activation=activation, seed=seed + len(hidden_sizes), **corruption
        )
        stacked.build((None, X.shape[1]))
        for variable, value in zip(stacked.kernels, [w[0] for w in weights], strict=True):
            variable.assign(value)
        for variable, value in zip(stacked.encoder_biases, [w[1] for w in weights], strict=True):
            variable.assign(value)
        for variable, value in zip(stacked.decoder_biases, decoder_biases[::-1], strict=True):
            variable.assign(value)
        label = "fine-tuning the stacked autoencoder"
        logger.info("%s: %s, %d epochs", label, arrows(widths), epochs)
        scaling = stack_encoder(X.shape[1], [], scale=scale)
        batches = SparseBatches(
            X,
            batch_size=batch_size,
            seed=seed + len(hidden_sizes),
            transform=_frozen(scaling) if scaling.layers else None,
        )
        stage = _fit_autoencoder(
            stacked, batches, epochs, learning_rate, verbose, name="stacked", label=label
        )
        history.append({"stage": "stacked", "width": int(hidden_sizes[-1]), **stage})
        weights = [
            [keras.ops.convert_to_numpy(k), keras.ops.convert_to_numpy(b)]
            for k, b in zip(stacked.kernels, stacked.encoder_biases, strict=True)
        ]
    return weights, history


def _frozen(encoder):
    return lambda x: keras.ops.convert_to_numpy(encoder(x, training=False))


def _fit_autoencoder(dae, batches, epochs, learning_rate, verbose, *, name, label):
    inputs = keras.Input((batches[0][0].shape[1],))
    model = keras.Model(inputs, dae(inputs), name=f"dae_{name}")
    model.compile(keras.optimizers.Adam(learning_rate), loss="mse")
    steps = min(len(batches), _INITIAL_LOSS_BATCHES)
    initial = model.evaluate(batches, steps=steps, verbose=0)
    callbacks = [EpochTimer(), StageProgress(label, verbose=verbose)]
    fitted = model.fit(batches, epochs=epochs, callbacks=callbacks, verbose=0)
    return {
        "initial_loss": float(initial),
        "loss": [float(v) for v in fitted.history["loss"]],
        "seconds": [float(v) for v in fitted.history["seconds"]],
    }


def scaling_layer(scale):
    """A `Normalization` layer standardizing genes with the record's `scale` statistics."""
    std = np.asarray(scale["std"], dtype=np.float32)
    return keras.layers.Normalization(mean=scale["mean"], variance=std**2, name="scale")


def stack_encoder(n_inputs, weights, *, activation="tanh", scale=None):
    """A frozen `keras.Sequential` encoder: optional gene scaling, then dense layers holding
    `weights` (`[kernel, bias]` each)."""
    encoder = keras.Sequential([keras.Input((n_inputs,))])
    if scale is not None:
        encoder.add(scaling_layer(scale))
    for kernel, bias in weights:
        layer = keras.layers.Dense(kernel.shape[1], activation=activation, trainable=False)
        encoder.add(layer)
        layer.set_weights([np.asarray(kernel), np.asarray(bias)])
    return encoder


def save_encoder(path, weights):
    """Write encoder `weights` (`[kernel, bias]` per layer) to an `.npz` file (no pickle)."""
    arrays = {}
    for i, (kernel, bias) in enumerate(weights):
        arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel, bias
    np.savez(path, **arrays)


def load_encoder(path):
    """Encoder weights written by `save_encoder`."""
    with np.load(path, allow_pickle=False) as arrays:
        return [[arrays[f"kernel_{i}"], arrays[f"bias_{i}"]] for i in range(len(arrays.files) // 2)]
