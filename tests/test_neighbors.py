"""The neighbour index: recall against exact search, determinism with a seed, save and load."""

import dataclasses
import json

import faiss
import numpy as np
import pytest

from scquery.bundle import load_bundle, reference_index, save_bundle
from scquery.errors import ScqueryError
from scquery.extend import extend
from scquery.neighbors import INDEX_FILES, SELF_PER_GROUP, TARGET_RECALL, IVFFlatSearch, NeighborIndex
from scquery.query import query


def clustered(n, seed, *, shift=0.0, width=16, n_types=12):
    """Cells of `n_types` clusters of several spreads (the same clusters for every `seed`)."""
    rng = np.random.default_rng(0)
    centres, spreads = rng.normal(size=(n_types, width)), rng.uniform(0.2, 0.6, n_types)
    draw = np.random.default_rng(seed)
    types = draw.integers(n_types, size=n)
    points = centres[types] + draw.normal(size=(n, width)) * spreads[types, None] + shift
    return np.tanh(points).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    return clustered(6000, seed=1)


@pytest.fixture(scope="module")
def approximate(reference):
    return NeighborIndex(reference, exact_max_cells=1000, seed=0)


def recall(found, truth):
    return np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)])


def test_approximate_search_recalls_the_exact_neighbours(reference, approximate):
    exact = NeighborIndex(reference, seed=0)
    assert exact.exact and not approximate.exact
    assert "IVF-Flat" in approximate.description(15) and exact.description(15) == "exact"
    # queries from another draw, and from a shifted one (another study's cells lie off the reference)
    for queries in (clustered(2000, seed=2), clustered(2000, seed=3, shift=0.3)):
        d_exact, i_exact = exact.kneighbors(queries, 15)
        d_approx, i_approx = approximate.kneighbors(queries, 15)
        assert recall(i_approx, i_exact) >= TARGET_RECALL - 0.02
        assert (np.diff(d_approx, axis=1) >= 0).all()
        # the distances of the neighbours found are exact, so the nearest one's mostly agree
        assert np.isclose(d_approx[:, 0], d_exact[:, 0], atol=1e-5).mean() > 0.95
        found = np.linalg.norm(queries[:, None, :] - reference[i_approx[:, :3]], axis=2)
        np.testing.assert_allclose(d_approx[:, :3], found, atol=1e-5)
    measured = np.isfinite(exact.nearest_distances)  # the same seeded sample of cells in both
    np.testing.assert_array_equal(np.isfinite(approximate.nearest_distances), measured)
    approx_nearest, exact_nearest = approximate.nearest_distances[measured], exact.nearest_distances[measured]
    assert np.isclose(approx_nearest, exact_nearest, atol=1e-5).mean() > TARGET_RECALL
    assert (approx_nearest >= exact_nearest - 1e-5).all()


def test_exact_search_is_exact_for_a_query_of_thousands_of_cells():
    # faiss's brute force moves to BLAS (|q|² + |r|² - 2 q·r) above about 1,100 queries a call, whose
    # round-off swaps near neighbours of points far from the origin; computed in float64 here
    rng = np.random.default_rng(0)
    reference = (rng.normal(size=(5000, 100)) * 0.05 + 3).astype(np.float32)
    queries = (rng.normal(size=(3000, 100)) * 0.05 + 3).astype(np.float32)
    distances, indices = NeighborIndex(reference, seed=0).kneighbors(queries, 15)
    truth = np.sqrt(((queries[-200:, None, :].astype(np.float64) - reference[None]) ** 2).sum(axis=2))
    np.testing.assert_array_equal(indices[-200:], np.argsort(truth, axis=1, kind="stable")[:, :15])
    np.testing.assert_allclose(distances[-200:], np.sort(truth, axis=1)[:, :15], rtol=1e-5)


def test_a_large_search_calibrates_nprobe_on_its_own_cells(reference, monkeypatch):
    index = NeighborIndex(reference, exact_max_cells=1000, seed=0)
    built = index.backend.nprobe[15]
    monkeypatch.setattr("scquery.neighbors.QUERY_CALIBRATED", 2000)
    exact = NeighborIndex(reference, seed=0)
    # cells between the reference's clusters, whose neighbours lie in more lists than its own cells'
    between = (clustered(3000, seed=5) + clustered(3000, seed=6)) / 2
    truth = exact.kneighbors(between, 15)[1]
    assert recall(index.kneighbors(between[:1000], 15)[1], truth[:1000]) < TARGET_RECALL - 0.05
    assert index.backend.searched == (15, built)  # a small search: the build's nprobe
    assert recall(index.kneighbors(between, 15)[1], truth) >= TARGET_RECALL  # the bound, not the mean
    searched = index.backend.searched
    assert searched[0] == 15 and searched[1] > built and index.description(15).endswith(f"={searched[1]})")
    assert index.backend.nprobe[15] == built  # what the bundle saves is the build's


def test_leave_self_out_distances_of_a_sample_of_each_group(reference, approximate):
    groups = np.where(np.arange(len(reference)) < 500, "rare", "common")  # 500 and 5,500 cells
    index = NeighborIndex(reference, groups=groups, exact_max_cells=1000, seed=0)
    measured = np.isfinite(index.nearest_distances)
    assert measured[:500].all() and measured[500:].sum() == SELF_PER_GROUP
    assert np.isfinite(approximate.nearest_distances).sum() == SELF_PER_GROUP  # no groups: one
    small = NeighborIndex(reference[:300], groups=groups[:300], seed=0)
    assert np.isfinite(small.nearest_distances).all() and (small.nearest_distances > 0).all()


def test_a_reference_cell_is_its_own_nearest_neighbour(reference, approximate):
    distances, indices = approximate.kneighbors(reference[:200], 5)
    assert (indices[:, 0] == np.arange(200)).all() and distances[:, 0].max() < 1e-3
    assert NeighborIndex(reference[:50], seed=0).kneighbors(reference[:3], 10**6)[1].shape == (3, 50)


def test_the_same_seed_builds_the_same_index(reference, approximate):
    again = NeighborIndex(reference, exact_max_cells=1000, seed=0)
    again.backend.index.nprobe = approximate.backend.index.nprobe  # the search width last used is saved too
    assert np.array_equal(
        faiss.serialize_index(again.backend.index), faiss.serialize_index(approximate.backend.index)
    )
    assert again.backend.nprobe.items() <= approximate.backend.nprobe.items()
    np.testing.assert_array_equal(again.nearest_distances, approximate.nearest_distances)
    other = NeighborIndex(reference, exact_max_cells=1000, seed=1)
    assert not np.array_equal(_centroids(other)[:10], _centroids(again)[:10])


def _centroids(index):
    return index.backend.index.quantizer.reconstruct_n(0, index.backend.index.nlist)


@pytest.mark.parametrize("exact_max_cells", [1000, 10**6])
def test_save_and_load_give_the_same_search(reference, tmp_path, exact_max_cells):
    index = NeighborIndex(reference, exact_max_cells=exact_max_cells, seed=0)
    index.save(tmp_path)
    expected = {"index.json", "index.npy"} | ({"index.faiss"} if not index.exact else set())
    assert {p.name for p in tmp_path.iterdir()} == expected and expected <= set(INDEX_FILES)
    loaded = NeighborIndex.load(tmp_path, reference.copy())
    assert type(loaded.backend) is type(index.backend)
    assert getattr(loaded.backend, "nprobe", None) == getattr(index.backend, "nprobe", None)
    np.testing.assert_array_equal(loaded.nearest_distances, index.nearest_distances)
    queries = clustered(300, seed=4)
    for a, b in zip(loaded.kneighbors(queries, 15), index.kneighbors(queries, 15), strict=True):
        np.testing.assert_array_equal(a, b)
    changed = reference.copy()
    changed[0, 0] += 1
    assert NeighborIndex.load(tmp_path, changed) is None  # built over other embeddings
    assert NeighborIndex.load(tmp_path / "missing", reference) is None  # a bundle without an index


def test_an_index_saved_before_the_backends_is_read(reference, approximate, tmp_path):
    approximate.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    del meta["backend"]
    (tmp_path / "index.json").write_text(json.dumps({**meta, "format": 2, "exact": False}))
    loaded = NeighborIndex.load(tmp_path, reference)
    assert isinstance(loaded.backend, IVFFlatSearch) and loaded.backend.nprobe == approximate.backend.nprobe


def test_a_grown_index_adds_the_new_cells_to_a_copy(reference):
    old = NeighborIndex(reference[:4000], exact_max_cells=1000, seed=0)
    saved = faiss.serialize_index(old.backend.index)
    grown = old.grown(reference)
    assert np.array_equal(faiss.serialize_index(old.backend.index), saved)  # the old index is unchanged
    assert type(grown.backend) is IVFFlatSearch and grown.backend.index.ntotal == len(reference)
    np.testing.assert_array_equal(_centroids(grown), _centroids(old))  # no new k-means
    _, indices = grown.kneighbors(reference[4000:4200], 1)
    assert (indices[:, 0] == np.arange(4000, 4200)).all()  # the new cells are found
    queries = clustered(2000, seed=3, shift=0.3)
    truth = NeighborIndex(reference, seed=0).kneighbors(queries, 15)[1]
    assert recall(grown.kneighbors(queries, 15)[1], truth) >= TARGET_RECALL - 0.02
    assert np.isfinite(grown.nearest_distances).sum() == SELF_PER_GROUP
    changed = reference.copy()
    changed[0, 0] += 1  # another reference: built anew, by the default rule (exact at 6,000 cells)
    assert old.grown(changed).exact


def test_a_damaged_index_fails_clearly(reference, approximate, tmp_path):
    approximate.save(tmp_path)
    (tmp_path / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(ScqueryError, match="damaged"):
        NeighborIndex.load(tmp_path, reference)


def test_the_bundle_carries_its_index(bundle, split, tmp_path):
    assert bundle.index is not None and bundle.index.indexes(bundle.reference.obsm["X_scquery"])  # train's
    path = save_bundle(bundle, tmp_path / "model")
    assert {"index.json", "index.npy"} <= {p.name for p in path.iterdir()}
    loaded = load_bundle(path)
    np.testing.assert_array_equal(loaded.index.nearest_distances, bundle.index.nearest_distances)
    built = loaded.index
    adata = split[1][:30].copy()
    query(adata, loaded)
    assert loaded.index is built and reference_index(loaded) is built  # the saved index, unchanged
    assert adata.uns["scquery"]["query_params"]["search"] == built.description(15)
    extended = extend(loaded, split[1][:20].copy(), label_key="bulk_labels")
    assert loaded.index is built and extended.index is not built
    assert extended.index.indexes(extended.reference.obsm["X_scquery"])
    # a bundle saved without an index (an older scquery): each use builds one, the bundle is left as it is
    older = dataclasses.replace(loaded, index=None)
    query(split[1][:30].copy(), older)
    assert older.index is None
    save_bundle(older, tmp_path / "older")
    assert load_bundle(tmp_path / "older").index is not None
