"""Dense mini-batches streamed from sparse expression matrices, never densifying the whole."""

import math

import keras
import numpy as np
import scipy.sparse as sp

try:
    from anndata.abc import CSRDataset
except ImportError:  # anndata < 0.11
    from anndata.experimental import CSRDataset

__all__ = ["RowSource", "SparseBatches", "iter_dense_chunks"]


class RowSource:
    """Rows made on demand (e.g. read from disk and processed: `scquery.stream.ReferenceRows`):
    `shape`, and `source[rows]` (a sorted integer array or a slice) gives those rows as CSR."""

    shape: tuple[int, int]

    def __getitem__(self, rows):
        raise NotImplementedError


def _rows(X):
    """Rows of `X` in a form that supports row indexing: CSR, a backed CSR dataset, a `RowSource`
    or an array."""
    if isinstance(X, CSRDataset | RowSource | np.ndarray) or sp.issparse(X) and X.format == "csr":
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

    With `cells`, only those rows of `X` are used (no copy of them is made): `y` and
    `sample_weight` then hold one value per used row, in the order of `cells`.

    Args:
        X: CSR matrix, dense array, or the `.X` of an h5ad opened with `backed='r'`.
        y: targets, one per row (labels or one-hot rows), or None.
        cells: the rows of `X` to use (integer indices), or None for all.
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
        cells=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.X = _rows(X)
        self.cells = None if cells is None else np.asarray(cells, dtype=np.int64)
        self.n = self.X.shape[0] if cells is None else len(self.cells)
        for name, values in (("y", y), ("sample_weight", sample_weight)):
            if values is not None and len(values) != self.n:
                used = "X has" if cells is None else "cells holds"
                raise ValueError(f"{name} has {len(values)} rows, {used} {self.n}.")
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
        """The rows of `X` in batch `index`, in increasing order."""
        return self._rows_of(self._positions(index))

    def _positions(self, index):
        """Batch `index`'s positions among the used rows (sorted)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches).")
        return np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])

    def _rows_of(self, positions):
        return positions if self.cells is None else self.cells[positions]

    def __getitem__(self, index):
        positions = self._positions(index)
        x = _dense(self.X[self._rows_of(positions)])
        if self.transform is not None:
            x = self.transform(x)
        if self.y is None:
            return x, x
        if self.sample_weight is None:
            return x, self.y[positions]
        return x, self.y[positions], self.sample_weight[positions]

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._rng.permutation(self.n)


def iter_dense_chunks(X, chunk_size, *, cells=None):
    """Yield the rows of `X` (as `SparseBatches` accepts it) in order, or its rows `cells` in their
    order, as dense float32 chunks of at most `chunk_size` rows."""
    X = _rows(X)
    n = X.shape[0] if cells is None else len(cells)
    for start in range(0, n, int(chunk_size)):
        chunk = slice(start, start + int(chunk_size))
        yield _dense(X[chunk] if cells is None else X[np.asarray(cells)[chunk]])
