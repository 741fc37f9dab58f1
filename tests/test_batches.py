"""Streaming dense mini-batches from sparse matrices and backed h5ad files."""

import tracemalloc

import anndata as ad
import keras
import numpy as np
import pytest
import scipy.sparse as sp

from scquery.batches import SparseBatches, iter_dense_chunks


@pytest.fixture
def X():
    return sp.random(103, 17, density=0.3, format="csr", dtype=np.float32, random_state=0)


def _epoch(batches):
    return [batches[i] for i in range(len(batches))]


def test_batches_cover_every_row_once(X):
    batches = SparseBatches(X, batch_size=10, seed=3)
    assert len(batches) == 11
    seen = np.concatenate([batches.rows(i) for i in range(len(batches))])
    assert sorted(seen) == list(range(103))
    (x,) = batches[10]  # no targets: the input only
    assert x.shape == (3, 17) and x.dtype == np.float32
    np.testing.assert_array_equal(x, X[batches.rows(10)].toarray())


def test_labels_and_weights(X):
    y = np.arange(103)
    w = np.linspace(0, 1, 103)
    x, labels, weights = SparseBatches(X, y, batch_size=16, seed=0, sample_weight=w)[2]
    np.testing.assert_array_equal(x[:, 0], X[labels].toarray()[:, 0])
    np.testing.assert_array_equal(weights, w[labels])
    with pytest.raises(ValueError, match="y has 5 rows, X has 103"):
        SparseBatches(X, np.arange(5), batch_size=8, seed=0)


def test_seeded_shuffling_is_deterministic(X):
    first, second = SparseBatches(X, batch_size=20, seed=7), SparseBatches(X, batch_size=20, seed=7)
    for _ in range(2):
        for (a,), (b,) in zip(_epoch(first), _epoch(second), strict=True):
            np.testing.assert_array_equal(a, b)
        epoch_rows = [first.rows(i) for i in range(len(first))]
        first.on_epoch_end()
        second.on_epoch_end()
    assert any(not np.array_equal(a, first.rows(i)) for i, a in enumerate(epoch_rows))  # re-drawn each epoch
    other = SparseBatches(X, batch_size=20, seed=8)
    assert not np.array_equal(other.rows(0), SparseBatches(X, batch_size=20, seed=7).rows(0))
    ordered = SparseBatches(X, batch_size=20, shuffle=False, seed=0)
    np.testing.assert_array_equal(ordered.rows(1), np.arange(20, 40))


def test_backed_h5ad(X, tmp_path):
    ad.AnnData(X).write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    try:
        streamed = _epoch(SparseBatches(backed.X, batch_size=25, seed=0))
        for (a,), (b,) in zip(streamed, _epoch(SparseBatches(X, batch_size=25, seed=0)), strict=True):
            np.testing.assert_array_equal(a, b)
        chunks = list(iter_dense_chunks(backed.X, 40))
    finally:
        backed.file.close()
    assert [len(c) for c in chunks] == [40, 40, 23]
    np.testing.assert_array_equal(np.vstack(chunks), X.toarray())


def test_iter_dense_chunks_in_order(X):
    chunks = list(iter_dense_chunks(X, 50))
    assert [c.shape for c in chunks] == [(50, 17), (50, 17), (3, 17)]
    assert all(c.dtype == np.float32 for c in chunks)
    np.testing.assert_array_equal(np.vstack(chunks), X.toarray())


def test_keras_fit_consumes_batches(X):
    model = keras.Sequential([keras.Input((17,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(SparseBatches(X, np.arange(103) % 2, batch_size=32, seed=0), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_streaming_does_not_densify_the_matrix():
    n_cells, n_genes, per_row = 200_000, 2_000, 100  # density 5 %
    rng = np.random.default_rng(0)
    big = sp.csr_matrix(
        (
            rng.random(n_cells * per_row, dtype=np.float32),
            rng.integers(0, n_genes, n_cells * per_row, dtype=np.int32),
            np.arange(0, n_cells * per_row + 1, per_row, dtype=np.int64),
        ),
        shape=(n_cells, n_genes),
    )
    batches = SparseBatches(big, batch_size=512, seed=0)
    dense_bytes = n_cells * n_genes * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        rows = 0
        for i in range(len(batches)):
            (x,) = batches[i]
            rows += len(x)
        batches.on_epoch_end()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == n_cells
    assert peak < dense_bytes / 10, f"peak {peak / 1e6:.0f} MB"


def test_a_subset_of_rows_is_used_in_place(X):
    cells = np.array([3, 5, 8, 13, 21, 34, 55, 89])
    y = np.arange(len(cells)) * 10
    batches = SparseBatches(X, y, cells=cells, batch_size=3, seed=1)
    assert len(batches) == 3 and batches.X is X  # the matrix itself, not a copy of the rows
    seen = []
    for i in range(len(batches)):
        x, labels = batches[i]
        rows = batches.rows(i)
        np.testing.assert_array_equal(x, X[rows].toarray())
        np.testing.assert_array_equal(labels, y[np.searchsorted(cells, rows)])
        seen += rows.tolist()
    assert sorted(seen) == cells.tolist()
    chunks = list(iter_dense_chunks(X, 5, cells=cells))
    np.testing.assert_array_equal(np.vstack(chunks), X[cells].toarray())
    with pytest.raises(ValueError, match="y has 2 rows, cells holds 8"):
        SparseBatches(X, y[:2], cells=cells, batch_size=8, seed=0)
