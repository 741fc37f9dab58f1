"""A tied-weight denoising autoencoder layer for Keras 3."""

import keras
from keras import activations, constraints, initializers, ops, regularizers


@keras.saving.register_keras_serializable(package="scquery")
class DenseLayerAutoencoder(keras.layers.Layer):
    """Stacked dense autoencoder whose decoder reuses the encoder kernels, transposed.

    Used like `keras.layers.Dense`, with `layer_sizes` (the encoder widths) in place of `units`.
    With input width d and `layer_sizes=[a, b, c]` the layer holds kernels d×a, a×b, b×c, encoder
    biases a, b, c and decoder biases b, a, d. The output has the input's shape.

    In training the input is corrupted before encoding (Vincent et al., JMLR 2010): `dropout` sets a
    fraction of the inputs to zero (masking noise, no rescaling) and `noise_stddev` adds Gaussian
    noise. Fit it with the clean input as the target.

    Args:
        layer_sizes: encoder widths, the last one is the bottleneck.
        activation: activation of every hidden layer, encoder and decoder.
        output_activation: activation of the reconstruction (linear by default).
        dropout: fraction of inputs masked in training.
        noise_stddev: standard deviation of the Gaussian noise added in training.
        use_bias, kernel_*, bias_*: as in `keras.layers.Dense`; they apply to every kernel and bias.
        seed: seed of the corruption noise.
    """

    def __init__(
        self,
        layer_sizes,
        activation=None,
        output_activation=None,
        dropout=0.0,
        noise_stddev=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not layer_sizes or any(int(size) <= 0 for size in layer_sizes):
            raise ValueError(f"layer_sizes must be positive integers, got {layer_sizes!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        if noise_stddev < 0.0:
            raise ValueError(f"noise_stddev must be non-negative, got {noise_stddev!r}.")
        self.layer_sizes = [int(size) for size in layer_sizes]
        self.activation = activations.get(activation)
        self.output_activation = activations.get(output_activation)
        self.dropout = float(dropout)
        self.noise_stddev = float(noise_stddev)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        widths = [input_dim, *self.layer_sizes]
        self.kernels = [
            self.add_weight(
                name=f"kernel_{i}",
                shape=(widths[i], widths[i + 1]),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            )
            for i in range(len(self.layer_sizes))
        ]
        self.encoder_biases, self.decoder_biases = [], []
        if self.use_bias:
            self.encoder_biases = [self._bias(f"encoder_bias_{i}", w) for i, w in enumerate(widths[1:])]
            self.decoder_biases = [
                self._bias(f"decoder_bias_{i}", w) for i, w in enumerate(reversed(widths[:-1]))
            ]
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def _bias(self, name, width):
        return self.add_weight(
            name=name,
            shape=(width,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def corrupt(self, inputs):
        """The training-time corruption: masking noise, then additive Gaussian noise."""
        if self.dropout > 0.0:
            keep = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) >= self.dropout
            inputs = inputs * ops.cast(keep, inputs.dtype)
        if self.noise_stddev > 0.0:
            noise = keras.random.normal(ops.shape(inputs), stddev=self.noise_stddev, seed=self.seed_generator)
            inputs = inputs + ops.cast(noise, inputs.dtype)
        return inputs

    def encode(self, inputs):
        """The bottleneck representation of `inputs` (no corruption)."""
        x = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        for i, kernel in enumerate(self.kernels):
            x = ops.matmul(x, ops.cast(kernel, x.dtype))
            if self.use_bias:
                x = ops.add(x, ops.cast(self.encoder_biases[i], x.dtype))
            x = self.activation(x)
        return x

    def decode(self, codes):
        """The reconstruction of bottleneck `codes`, through the transposed encoder kernels."""
        x = ops.convert_to_tensor(codes, dtype=self.compute_dtype)
        last = len(self.kernels) - 1
        for i, kernel in enumerate(reversed(self.kernels)):
            x = ops.matmul(x, ops.transpose(ops.cast(kernel, x.dtype)))
            if self.use_bias:
                x = ops.add(x, ops.cast(self.decoder_biases[i], x.dtype))
            x = self.output_activation(x) if i == last else self.activation(x)
        return x

    def call(self, inputs, training=None):
        if training:
            inputs = self.corrupt(inputs)
        return self.decode(self.encode(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer_sizes": self.layer_sizes,
                "activation": activations.serialize(self.activation),
                "output_activation": activations.serialize(self.output_activation),
                "dropout": self.dropout,
                "noise_stddev": self.noise_stddev,
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
                "seed": self.seed,
            }
        )
        return config


class SparseRows(keras.layers.Layer):
    """The rows of a CSR matrix held as the layer's non-trainable weights; called on row indices
    (int32), it returns those rows dense (float32).

    The matrix stays where weights live (an accelerator's memory; under a data-parallel scope, a copy
    on each device) and each batch is densified there, within the compiled training step: the host
    sends row indices only. Each row's entries are read as `width` (the longest row's count) slots
    from its start, those past its end masked, and scattered into the dense batch. The matrix is held
    in parts of consecutive rows, each of fewer than 2**31 values (int32 positions). A training
    model's first layer (`scquery.batches.device_rows`), never saved.

    Args:
        parts: per part, in row order, its CSR arrays `(data, indices, indptr)` (tensors or arrays;
            at least one value each, `indices` and `indptr` int32).
        n_columns: the matrix's number of columns.
        width: the most values any row holds.
    """

    def __init__(self, parts, *, n_columns, width, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.n_columns, self.width = int(n_columns), max(int(width), 1)
        self.counts = [int(indptr.shape[0]) - 1 for _, _, indptr in parts]
        self.firsts = [sum(self.counts[:i]) for i in range(len(parts))]
        self.held = []  # data, indices, indptr of each part in turn
        for i, (data, indices, indptr) in enumerate(parts):
            self.held += [
                keras.Variable(data, dtype="float32", trainable=False, name=f"data_{i}"),
                keras.Variable(indices, dtype="int32", trainable=False, name=f"indices_{i}"),
                keras.Variable(indptr, dtype="int32", trainable=False, name=f"indptr_{i}"),
            ]

    def call(self, rows):
        rows = ops.cast(rows, "int32")
        slots = ops.expand_dims(ops.arange(self.width, dtype="int32"), 0)
        columns, values = [], []
        for i, (first, count) in enumerate(zip(self.firsts, self.counts, strict=True)):
            data, indices, indptr = self.held[3 * i : 3 * i + 3]
            local = rows - first
            inside = ops.logical_and(local >= 0, local < count)
            local = ops.where(inside, local, 0)
            starts = ops.take(indptr, local)
            lengths = ops.where(inside, ops.take(indptr, local + 1) - starts, 0)
            held = slots < ops.expand_dims(lengths, 1)
            positions = ops.where(held, ops.expand_dims(starts, 1) + slots, 0)
            # a masked slot adds 0 to a column of its own (slot mod n_columns): no two of a row's
            # masked slots meet at one address (an accelerator's scatter serializes those)
            spread = ops.broadcast_to(slots % self.n_columns, ops.shape(positions))
            columns.append(ops.where(held, ops.take(indices, positions), spread))
            values.append(ops.where(held, ops.take(data, positions), 0.0))
        columns, values = ops.concatenate(columns, axis=1), ops.concatenate(values, axis=1)
        batch = ops.shape(rows)[0]
        cells = ops.broadcast_to(ops.expand_dims(ops.arange(batch, dtype="int32"), 1), ops.shape(columns))
        index = ops.stack([ops.reshape(cells, [-1]), ops.reshape(columns, [-1])], axis=1)
        return ops.scatter(index, ops.reshape(values, [-1]), (batch, self.n_columns))

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.n_columns)
