"""Dense mini-batches streamed from sparse expression matrices, never densifying the whole."""

import math

import keras
import numpy as np
import scipy.sparse as sp

try:
    from anndata.abc import CSRDataset
except ImportError:  # anndata < 0.11
    from anndata.experimental import CSRDataset

__all__ = ["SparseBatches", "iter_dense_chunks"]


def _rows(X):
    """Rows of `X` in a form that supports row indexing: CSR, a backed CSR dataset or an array."""
    if isinstance(X, CSRDataset | np.ndarray) or sp.issparse(X) and X.format == "csr":
        return X
    if sp.issparse(X):
        return sp.csr_matrix(X)
    raise TypeError(
        "X must be a scipy sparse matrix, a numpy array or the .X of an h5ad opened with "
        f"backed='r' (a CSR dataset), got {type(X).__name__}."
    )


def _dense(block):
    """A float32 dense copy of a block of rows."""
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float32)


class SparseBatches(keras.utils.PyDataset):
    """Dense float32 mini-batches of the rows of a sparse matrix, for `keras.Model.fit`.

    Each batch reads its rows (sorted indices, so backed h5ad files read efficiently) and densifies
    only them. With `y=None` a batch is `(x, x)` (autoencoder: the target is the clean input),
    otherwise `(x, y)` or `(x, y, w)` with `sample_weight`. `transform` (a callable on the dense
    batch, e.g. `scale_batch` or a frozen encoder) is applied to x, and the target of `y=None` is
    the transformed x. With `shuffle`, the row order is a permutation drawn from
    `numpy.random.default_rng(seed)` and re-drawn at each epoch end: one seed, one batch sequence.

    Args:
        X: CSR matrix, dense array, or the `.X` of an h5ad opened with `backed='r'`.
        y: targets, one per row (labels or one-hot rows), or None.
        batch_size: rows per batch; the last batch may be smaller.
        shuffle: shuffle the rows at start and after every epoch.
        seed: seed of the shuffling.
        transform: callable on each dense batch, or None.
        sample_weight: weights, one per row, or None.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `keras.utils.PyDataset`.
    """

    def __init__(
        self,
        X,
        y=None,
        *,
        batch_size=256,
        shuffle=True,
        seed=0,
        transform=None,
        sample_weight=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.X = _rows(X)
        self.n = self.X.shape[0]
        for name, values in (("y", y), ("sample_weight", sample_weight)):
            if values is not None and len(values) != self.n:
                raise ValueError(f"{name} has {len(values)} rows, X has {self.n}.")
        if sample_weight is not None and y is None:
            raise ValueError("sample_weight needs targets y.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
        self.y = None if y is None else np.asarray(y)
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.transform = transform
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(self.n) if shuffle else np.arange(self.n)

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def rows(self, index):
        """The sorted row indices of batch `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches).")
        return np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])

    def __getitem__(self, index):
        rows = self.rows(index)
        x = _dense(self.X[rows])
        if self.transform is not None:
            x = self.transform(x)
        if self.y is None:
            return x, x
        if self.sample_weight is None:
            return x, self.y[rows]
        return x, self.y[rows], self.sample_weight[rows]

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._rng.permutation(self.n)


def iter_dense_chunks(X, chunk_size):
    """Yield the rows of `X` (as `SparseBatches` accepts it) in order, as dense float32 chunks of
    at most `chunk_size` rows."""
    X = _rows(X)
    for start in range(0, X.shape[0], int(chunk_size)):
        yield _dense(X[start : start + int(chunk_size)])
