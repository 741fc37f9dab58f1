"""The genes a query lacks, read from the genes it has by the reference's first denoising autoencoder.

A query of another species, protocol or gene panel holds only some of the model's genes. The first
pretraining stage is a tied denoising autoencoder that learnt to rebuild reference cells from copies
with values masked (`scquery.pretrain.pretrain_greedy`); the bundle keeps it (`imputer_record`, in
`uns[IMPUTER_KEY]` of its reference). A query's missing genes start at their mean over the reference's
types (`scquery.profiles.missing_gene_levels`), then take the autoencoder's reconstruction of the cell,
`STEPS` times over (`Imputer.fill`): the measured genes never change. A bundle without an autoencoder
(trained without pretraining, or saved before it was kept) reads the missing genes at the levels alone.
"""

import keras
import numpy as np

from .layers import DenseLayerAutoencoder
from .pretrain import scaling_layer

IMPUTER_KEY = "imputer"
#: Rounds of reconstruction; chosen on the simulated mouse queries of the tuning pairs
#: (benchmarks/RESULTS.md, "Another species, simulated").
STEPS = 5


def imputer_record(autoencoder, activation):
    """What a bundle keeps of the first stage's autoencoder (`PretrainedEncoder.autoencoder`:
    `[kernel, encoder bias, decoder bias]`) and its activation; None without one."""
    if autoencoder is None:
        return None
    kernel, encoder_bias, decoder_bias = (np.asarray(array, dtype=np.float32) for array in autoencoder)
    return {
        "kernel": kernel,
        "encoder_bias": encoder_bias,
        "decoder_bias": decoder_bias,
        "activation": str(activation),
    }


def first_autoencoder(weights, activation):
    """The first stage's tied autoencoder as a built `DenseLayerAutoencoder`, from its
    `[kernel, encoder bias, decoder bias]` (`PretrainedEncoder.autoencoder`, or a record's)."""
    kernel, encoder_bias, decoder_bias = (np.asarray(array, dtype=np.float32) for array in weights)
    layer = DenseLayerAutoencoder([kernel.shape[1]], activation=str(activation))
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel, encoder_bias, decoder_bias])
    return layer


class Imputer:
    """Fills the missing genes of dense chunks of processed query values (see the module docstring).

    Args:
        columns: the positions of the model's genes the query lacks.
        levels: their starting values (`scquery.profiles.missing_gene_levels`).
        record: the bundle's `imputer_record`, or None (the levels alone).
        scale: the preprocessing record's `scale` statistics, where the model standardizes its genes
            (the autoencoder learnt on the standardized values).
    """

    def __init__(self, columns, levels, record=None, scale=None):
        self.columns, self.levels = np.asarray(columns), np.asarray(levels, dtype=np.float32)
        self.autoencoder = self.scaling = None
        if record is not None:
            weights = [record["kernel"], record["encoder_bias"], record["decoder_bias"]]
            self.autoencoder = first_autoencoder(weights, record["activation"])
            if scale is not None:
                self.scaling = scaling_layer(scale)
                self.mean = np.asarray(scale["mean"], dtype=np.float32)[self.columns]
                self.std = np.asarray(scale["std"], dtype=np.float32)[self.columns]

    @property
    def rebuilds(self):
        """Whether the missing genes are rebuilt by the autoencoder (else read at their levels)."""
        return self.autoencoder is not None

    def fill(self, chunk):
        """`chunk` (dense float32 cells × the model's genes) with its missing genes filled, in place."""
        chunk[:, self.columns] = self.levels
        if self.autoencoder is None:
            return chunk
        for _ in range(STEPS):
            x = chunk if self.scaling is None else self.scaling(chunk)
            rebuilt = keras.ops.convert_to_numpy(self.autoencoder(x))[:, self.columns]
            if self.scaling is not None:
                rebuilt = rebuilt * self.std + self.mean
            chunk[:, self.columns] = np.maximum(rebuilt, 0.0)  # processed values are never negative
        return chunk
