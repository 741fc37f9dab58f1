"""The tied-weight denoising autoencoder layer."""

import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import keras
import numpy as np
import pytest
from keras import ops

from scquery.layers import DenseLayerAutoencoder


def structured_data(n=512, d=40, rank=4, seed=0):
    """Low-rank data plus a little noise: an autoencoder can learn it."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) / 2).astype("float32")


def built_layer(d=30, sizes=(8, 4), **kwargs):
    layer = DenseLayerAutoencoder(list(sizes), activation="tanh", **kwargs)
    layer.build((None, d))
    return layer


def test_parameter_count_and_shapes():
    layer = DenseLayerAutoencoder([100, 50, 20])
    layer.build((None, 1000))
    assert layer.count_params() == 107_320
    assert [tuple(k.shape) for k in layer.kernels] == [(1000, 100), (100, 50), (50, 20)]
    assert [b.shape[0] for b in layer.encoder_biases] == [100, 50, 20]
    assert [b.shape[0] for b in layer.decoder_biases] == [50, 100, 1000]
    assert sum(np.prod(k.shape) for k in layer.kernels) == 106_000


def test_output_shape_and_encode_decode():
    layer = built_layer()
    x = structured_data(16, 30)
    assert tuple(layer(x).shape) == (16, 30)
    assert tuple(layer.encode(x).shape) == (16, 4)
    np.testing.assert_allclose(layer(x), layer.decode(layer.encode(x)), rtol=1e-6)


def test_decoder_is_tied_to_encoder_kernel():
    layer = built_layer()
    z = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    before = ops.convert_to_numpy(layer.decode(z))
    layer.kernels[1].assign(layer.kernels[1] * 2.0)
    assert not np.allclose(before, ops.convert_to_numpy(layer.decode(z)))


def test_gradient_from_decoder_alone_reaches_encoder_kernel():
    import tensorflow as tf

    layer = built_layer()
    z = tf.constant(np.ones((3, 4), "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer.decode(z) ** 2)
    grads = tape.gradient(loss, [layer.kernels[0], layer.kernels[1]])
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_corruption_only_in_training():
    layer = built_layer(dropout=0.5, noise_stddev=0.1, seed=3)
    x = structured_data(64, 30)
    np.testing.assert_allclose(layer(x, training=False), layer(x), rtol=1e-6)
    assert not np.allclose(layer(x, training=True), layer(x))
    masked = ops.convert_to_numpy(DenseLayerAutoencoder([4], dropout=0.5, seed=0).corrupt(x))
    assert 0.4 < np.mean(masked == 0) < 0.6
    np.testing.assert_array_equal(masked[masked != 0], x[masked != 0])


def test_training_lowers_reconstruction_error():
    keras.utils.set_random_seed(0)
    x = structured_data()
    model = keras.Sequential([keras.Input((40,)), DenseLayerAutoencoder([16, 4], dropout=0.1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    start = model.evaluate(x, x, verbose=0)
    model.fit(x, x, epochs=30, batch_size=64, verbose=0)
    assert model.evaluate(x, x, verbose=0) < 0.3 * start


def test_keras_save_load_round_trip(tmp_path):
    layer = DenseLayerAutoencoder(
        [12, 3],
        activation="relu",
        output_activation="sigmoid",
        dropout=0.3,
        noise_stddev=0.05,
        kernel_regularizer="l2",
        seed=7,
    )
    model = keras.Sequential([keras.Input((20,)), layer])
    model.compile("adam", "mse")
    x = structured_data(32, 20)
    model.fit(x, x, epochs=1, verbose=0)
    model.save(tmp_path / "dae.keras")
    loaded = keras.saving.load_model(tmp_path / "dae.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    config = loaded.layers[0].get_config()
    assert config["dropout"] == 0.3 and config["noise_stddev"] == 0.05 and config["seed"] == 7
    assert config["activation"] == "relu" and config["output_activation"] == "sigmoid"
    assert config["layer_sizes"] == [12, 3] and config["kernel_regularizer"] is not None
    assert DenseLayerAutoencoder.from_config(config).get_config() == config


def test_seed_usage_from_the_original_package():
    n = 64
    x = np.random.default_rng(0).random((n, 1000)).astype("float32")
    inputs = keras.Input((1000,))
    layer = DenseLayerAutoencoder([100, 50, 20], activation="tanh", dropout=0.2)
    model = keras.Model(inputs, layer(inputs))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(x, x, epochs=1, batch_size=16, verbose=0)
    assert tuple(layer.encode(x).shape) == (n, 20)
    # the values, by hand: tanh through the kernels, back through the same kernels transposed
    kernels = [keras.ops.convert_to_numpy(k) for k in layer.kernels]
    encoder = [keras.ops.convert_to_numpy(b) for b in layer.encoder_biases]
    decoder = [keras.ops.convert_to_numpy(b) for b in layer.decoder_biases]
    h = x
    for kernel, bias in zip(kernels, encoder, strict=True):
        h = np.tanh(h @ kernel + bias)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.encode(x)), h, rtol=1e-4, atol=1e-5)
    for i, (kernel, bias) in enumerate(zip(kernels[::-1], decoder, strict=True)):
        h = h @ kernel.T + bias
        h = h if i == len(kernels) - 1 else np.tanh(h)  # linear reconstruction
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.predict(x, verbose=0)), h, rtol=1e-4, atol=1e-5
    )
    assert [k.shape for k in kernels] == [(1000, 100), (100, 50), (50, 20)]
    assert [b.shape for b in decoder] == [(50,), (100,), (1000,)]
    assert np.abs(encoder[0]).max() > 0 and np.abs(decoder[-1]).max() > 0  # the biases were trained


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="layer_sizes"):
        DenseLayerAutoencoder([])
    with pytest.raises(ValueError, match="dropout"):
        DenseLayerAutoencoder([4], dropout=1.0)


@pytest.mark.skipif(find_spec("jax") is None, reason="JAX is not installed")
def test_runs_on_jax_backend():
    script = textwrap.dedent(
        """
        import keras, numpy as np
        from scquery.layers import DenseLayerAutoencoder
        assert keras.backend.backend() == "jax"
        x = np.random.default_rng(0).random((32, 10)).astype("float32")
        model = keras.Sequential([keras.Input((10,)), DenseLayerAutoencoder([6, 2], dropout=0.2)])
        model.compile("adam", "mse")
        model.fit(x, x, epochs=2, verbose=0)
        print(model.layers[0].encode(x).shape)
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(32, 2)" in out.stdout
