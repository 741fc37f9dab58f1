"""Dense mini-batches streamed from sparse expression matrices, never densifying the whole."""

import math
import threading

import keras
import numpy as np
import scipy.sparse as sp

from .layers import SparseRows
from .placement import device_budget
from .values import CSRDataset

__all__ = [
    "RowBatches",
    "RowSource",
    "SparseBatches",
    "device_rows",
    "iter_dense_chunks",
    "read_rows",
    "shuffled_order",
]

#: Rows read at a time when a matrix is copied to the device.
DEVICE_BLOCK_ROWS = 65_536
#: The most values a part of a matrix held on the device holds (int32 positions).
PART_VALUES = 2**31 - 1


class RowSource:
    """Rows made on demand (e.g. read from disk and processed: `scquery.preprocessing.rows.ReferenceRows`):
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


def read_rows(X, rows):
    """The rows `rows` (sorted) of `X` as `_rows` accepts it: a backed CSR dataset is read run by
    run from its arrays (three reads per stretch of consecutive rows), not row by row."""
    if not isinstance(X, CSRDataset) or len(rows) == 0:
        return X[rows]
    rows = np.asarray(rows)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, stops = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1
    group = X.group
    all_pointers, all_data, all_indices = group["indptr"], group["data"], group["indices"]
    data, indices, lengths = [], [], []
    for start, stop in zip(starts, stops, strict=True):
        pointers = all_pointers[int(start) : int(stop) + 1]
        data.append(all_data[pointers[0] : pointers[-1]])
        indices.append(all_indices[pointers[0] : pointers[-1]])
        lengths.append(np.diff(pointers))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
    return sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr), shape=(len(rows), X.shape[1])
    )


def _in_memory(X):
    return isinstance(X, np.ndarray) or sp.issparse(X)


def shuffled_order(rng, n, block_rows, buffer_rows):
    """An epoch's order of `n` rows: blocks of `block_rows` consecutive rows in a random order,
    their rows then shuffled within each stretch of `buffer_rows` (rows far apart in the data meet
    in a batch, yet a stretch reads as few runs of consecutive rows). Rows that fit in one stretch
    are simply permuted."""
    if n <= buffer_rows:
        return rng.permutation(n)
    n_blocks = math.ceil(n / block_rows)
    order = (rng.permutation(n_blocks)[:, None] * block_rows + np.arange(block_rows)).ravel()
    order = order[order < n]
    for start in range(0, n, buffer_rows):
        order[start : start + buffer_rows] = rng.permutation(order[start : start + buffer_rows])
    return order


def data_parallel_devices():
    """The devices a batch is split over: those of the active `keras.distribution.DataParallel`
    (`with keras.distribution.DataParallel(...).scope():`, JAX backend), else 1."""
    distribution = keras.distribution.distribution()
    if isinstance(distribution, keras.distribution.DataParallel):
        return int(np.prod(distribution.device_mesh.shape))
    return 1


def data_shard():
    """`(shard, shards)`: under a data-parallel distribution over several processes, each process
    feeds its own part of every batch (`shard` of `shards`, the distribution's data shard); else
    `(0, 1)`."""
    distribution = keras.distribution.distribution()
    if isinstance(distribution, keras.distribution.DataParallel) and distribution.num_processes > 1:
        return distribution.data_shard_id, distribution.num_processes
    return 0, 1


def _dense(block):
    """A float32 dense copy of a block of rows."""
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float32)


class SparseBatches(keras.utils.PyDataset):
    """Dense float32 mini-batches of the rows of a sparse matrix, for `keras.Model.fit`.

    Each batch reads its rows (sorted indices, so backed h5ad files read efficiently) and densifies
    only them. With `y=None` a batch is `(x,)`, for a model whose loss needs no target (a denoising
    autoencoder compares its output with its own clean input: `scquery.pretrain`), otherwise
    `(x, y)` or `(x, y, w)` with `sample_weight`. Any work on the dense batch (scaling, frozen
    layers) belongs in the model, where it runs compiled with the training step. With `shuffle`,
    the row order is a permutation drawn from `numpy.random.default_rng(seed)` and re-drawn at
    each epoch end: one seed, one batch sequence.

    With `cells`, only those rows of `X` are used (no copy of them is made): `y` and
    `sample_weight` then hold one value per used row, in the order of `cells`.

    Shuffling permutes blocks of `block_rows` consecutive used rows, then the rows within each
    stretch of `buffer_batches` batches (`shuffled_order`): the same order whether `X` is in memory
    or on disk, where a stretch is read at once, as few runs of consecutive rows, and cut into its
    batches (rows read from disk or made on demand, e.g. a `RowSource`).

    Under a data-parallel distribution over d devices (`data_parallel_devices`), each batch splits
    evenly over them: the last batch of an epoch is cut to a multiple of d rows (the rows left out,
    fewer than d, change with each epoch's order). Over several processes (`data_shard`), each one
    gives its consecutive part of every batch: together, the batch one process alone would give.

    Args:
        X: CSR matrix, dense array, or the `.X` of an h5ad opened with `backed='r'`.
        y: targets, one per row (labels or one-hot rows), or None.
        cells: the rows of `X` to use (integer indices), or None for all.
        batch_size: rows per batch; the last batch may be smaller.
        shuffle: shuffle the rows at start and after every epoch.
        seed: seed of the shuffling.
        sample_weight: weights, one per row, or None.
        block_rows, buffer_batches: the shuffling's blocks of consecutive rows and its stretches.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `keras.utils.PyDataset`.
    """

    def __init__(
        self,
        X,
        y=None,
        *,
        batch_size,
        shuffle=True,
        seed,
        sample_weight=None,
        cells=None,
        block_rows=64,
        buffer_batches=32,
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
        self.block_rows, self.buffer_batches = int(block_rows), int(buffer_batches)
        remainder = self.n % self.batch_size
        self._used = self.n - remainder % data_parallel_devices()
        self._shard, self._shards = data_shard()
        self._rng = np.random.default_rng(seed)
        self._buffers, self._lock = {}, threading.Lock()
        self._order = self._draw() if shuffle else np.arange(self.n)

    def _draw(self):
        return shuffled_order(self._rng, self.n, self.block_rows, self.buffer_batches * self.batch_size)

    def __len__(self):
        return math.ceil(self._used / self.batch_size)

    def rows(self, index):
        """The rows of `X` in batch `index`, in increasing order."""
        return self._rows_of(self._positions(index))

    def _positions(self, index):
        """Batch `index`'s positions among the used rows (sorted)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches).")
        positions = np.sort(
            self._order[index * self.batch_size : min((index + 1) * self.batch_size, self._used)]
        )
        return positions if self._shards == 1 else np.array_split(positions, self._shards)[self._shard]

    def _rows_of(self, positions):
        return positions if self.cells is None else self.cells[positions]

    def _read(self, index, positions):
        """The rows at `positions` (sorted, of batch `index`): from memory directly, else from
        their stretch's block, read once (kept while its batches are asked for)."""
        if _in_memory(self.X):
            return self.X[self._rows_of(positions)]
        stretch = index // self.buffer_batches
        with self._lock:
            if stretch not in self._buffers:
                size = self.buffer_batches * self.batch_size
                held = np.sort(self._order[stretch * size : (stretch + 1) * size])
                self._buffers = {
                    key: value for key, value in self._buffers.items() if stretch - 1 <= key <= stretch + 1
                }
                self._buffers[stretch] = (held, read_rows(self.X, self._rows_of(held)))
            held, block = self._buffers[stretch]
        return block[np.searchsorted(held, positions)]

    def _inputs(self, index, positions):
        """The model's input for batch `index`: its rows, dense float32."""
        return _dense(self._read(index, positions))

    def __getitem__(self, index):
        positions = self._positions(index)
        x = self._inputs(index, positions)
        if self.y is None:
            return (x,)
        if self.sample_weight is None:
            return x, self.y[positions]
        return x, self.y[positions], self.sample_weight[positions]

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._draw()
            with self._lock:
                self._buffers = {}

    def close(self):
        """Drop the rows and targets. Keras's TensorFlow data adapter keeps every dataset it has fed
        alive (tensorflow/tensorflow#37653), so a fit closes its batches when done
        (`contextlib.closing`), or each training would keep its data."""
        self.X = self.y = self.sample_weight = self.cells = None
        self._buffers = {}


class RowBatches(SparseBatches):
    """`SparseBatches` whose batches carry the indices of their rows in `X` (int32) in place of the
    rows: for a model that holds `X`'s rows on the device and densifies them there (its first layer
    the `SparseRows` of `device_rows(X)`). The same batches, order and targets otherwise."""

    def _inputs(self, index, positions):
        return self._rows_of(positions).astype(np.int32)


def device_rows(X, *, force=False):
    """The rows of `X` (as `SparseBatches` takes it) held on the device: a `scquery.layers.SparseRows`
    layer, the first of a training model fed `RowBatches`; or None where batches are better densified
    on the host (`SparseBatches`). Unless `force`, the device must be an accelerator with room for
    them (`scquery.placement.device_budget`).

    `X` is read in blocks of `DEVICE_BLOCK_ROWS` rows, each copied to the device before the next is
    read (given up, None, once the rows read so far foretell more than the budget), and held in
    parts of at most `PART_VALUES` values."""
    budget = None if force else device_budget()
    if budget is None and not force:
        return None
    X = _rows(X)
    n_rows, n_columns = X.shape
    parts, part, lengths, stored = [], [], [], 0
    for start in range(0, n_rows, DEVICE_BLOCK_ROWS):
        block = sp.csr_matrix(X[start : start + DEVICE_BLOCK_ROWS])
        stored += block.nnz
        read = start + block.shape[0]
        if budget is not None and (8 * stored + 4 * read) * n_rows / read > budget:
            return None
        if part and sum(b.nnz for b in part) + block.nnz > PART_VALUES:
            parts.append(_device_part(part))
            part = []
        part.append(block)
        lengths.append(np.diff(block.indptr))
    parts.append(_device_part(part))
    width = int(np.concatenate([np.zeros(1, np.int64), *lengths]).max())
    return SparseRows(parts, n_columns=n_columns, width=width, name="rows")


def _device_part(blocks):
    """One part of `SparseRows`, the CSR arrays of consecutive `blocks` on the device (a part
    without values holds one zero: masked slots read position 0)."""
    data = [keras.ops.convert_to_tensor(b.data.astype(np.float32, copy=False)) for b in blocks if b.nnz]
    indices = [keras.ops.convert_to_tensor(b.indices.astype(np.int32, copy=False)) for b in blocks if b.nnz]
    lengths = np.concatenate([np.zeros(0, np.int64), *(np.diff(b.indptr) for b in blocks)])
    if not data:
        data, indices = [np.zeros(1, np.float32)], [np.zeros(1, np.int32)]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    join = keras.ops.concatenate
    return (
        (data[0] if len(data) == 1 else join(data)),
        (indices[0] if len(indices) == 1 else join(indices)),
        indptr,
    )


def iter_dense_chunks(X, chunk_size, *, cells=None):
    """Yield the rows of `X` (as `SparseBatches` accepts it) in order, or its rows `cells` in their
    order, as dense float32 chunks of at most `chunk_size` rows."""
    X = _rows(X)
    n = X.shape[0] if cells is None else len(cells)
    for start in range(0, n, int(chunk_size)):
        chunk = slice(start, start + int(chunk_size))
        yield _dense(X[chunk] if cells is None else read_rows(X, np.asarray(cells)[chunk]))
