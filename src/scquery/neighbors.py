"""Nearest-neighbour search over a bundle's reference embeddings, cached in the bundle folder."""

import hashlib
import json
import os
import warnings
from pathlib import Path

import hnswlib
import numpy as np
from sklearn.neighbors import NearestNeighbors

from .bundle import Bundle
from .errors import ScqueryError
from .io import write_atomically

__all__ = ["NeighborIndex"]

EXACT_MAX_CELLS = 50_000
"""References up to this many cells are searched exactly (scikit-learn); above, hnswlib."""
TARGET_RECALL = 0.95
"""The least recall of the approximate search, measured on a sample of reference cells."""
HNSW_M, HNSW_EF_CONSTRUCTION, MIN_EF, RECALL_SAMPLE = 16, 200, 16, 1000
INDEX_META, INDEX_HNSW, INDEX_CALIBRATION = "index.json", "index.hnsw", "index.npy"


class NeighborIndex:
    """Euclidean k-nearest-neighbour search over reference embeddings.

    References of at most `exact_max_cells` cells use exact search (scikit-learn
    `NearestNeighbors`); larger ones an hnswlib graph, built single-threaded with `seed` so that it
    is reproducible, whose search width `ef` is raised until the recall on a sample of reference
    cells reaches `TARGET_RECALL`. Queries use `n_threads` (default: all cores).

    Attributes:
        nearest_distances: each reference cell's distance to its nearest other reference cell.
    """

    def __init__(self, embeddings, *, exact_max_cells=EXACT_MAX_CELLS, seed=0, n_threads=None):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2 or len(self.embeddings) < 2:
            raise ScqueryError("The reference holds fewer than two cells; extend it or train on more cells.")
        self.exact = len(self.embeddings) <= exact_max_cells
        self.seed = seed
        self.n_threads = n_threads or os.cpu_count() or 1
        self.ef = {}
        if self.exact:
            self._search = NearestNeighbors(metric="euclidean").fit(self.embeddings)
        else:
            self._search = hnswlib.Index(space="l2", dim=self.embeddings.shape[1])
            self._search.init_index(
                max_elements=len(self.embeddings),
                M=HNSW_M,
                ef_construction=HNSW_EF_CONSTRUCTION,
                random_seed=seed,
            )
            self._search.set_num_threads(1)
            self._search.add_items(self.embeddings, np.arange(len(self.embeddings)))
        self.nearest_distances = self._leave_self_out()

    def kneighbors(self, embedding, k):
        """The `k` nearest reference cells of each row: `(distances, indices)`, nearest first."""
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        if self.exact:
            distances, indices = self._search.kneighbors(embedding, n_neighbors=k)
        else:
            self._search.set_ef(self._ef_for(k))
            self._search.set_num_threads(self.n_threads)
            indices, squared = self._search.knn_query(embedding, k=k)
            distances = np.sqrt(np.maximum(squared, 0))
        order = np.argsort(distances, axis=1, kind="stable")
        distances = np.take_along_axis(distances, order, axis=1).astype(np.float32)
        return distances, np.take_along_axis(indices, order, axis=1).astype(np.int64)

    def _leave_self_out(self):
        if self.exact:
            distances, _ = self._search.kneighbors(n_neighbors=1)
            return distances[:, 0].astype(np.float32)
        distances, indices = self.kneighbors(self.embeddings, 2)
        itself = indices[:, 0] == np.arange(len(indices))
        return np.where(itself, distances[:, 1], distances[:, 0]).astype(np.float32)

    def _ef_for(self, k):
        """The least `ef` (doubling from max(k, 16)) reaching `TARGET_RECALL` on sampled rows."""
        if k not in self.ef:
            rng = np.random.default_rng(self.seed)
            n = len(self.embeddings)
            sample = self.embeddings[np.sort(rng.choice(n, min(RECALL_SAMPLE, n), replace=False))]
            exact = NearestNeighbors(algorithm="brute").fit(self.embeddings)
            truth = exact.kneighbors(sample, n_neighbors=k, return_distance=False)
            ef = max(k, MIN_EF)
            while True:
                self._search.set_ef(ef)
                found, _ = self._search.knn_query(sample, k=k)
                hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True))
                if hits / truth.size >= TARGET_RECALL or ef >= n:
                    break
                ef = min(2 * ef, n)
            self.ef[k] = ef
        return self.ef[k]

    @classmethod
    def for_bundle(cls, bundle: Bundle, path=None, *, exact_max_cells=EXACT_MAX_CELLS, seed=0):
        """The index of `bundle.reference`, read from or cached in the bundle folder `path`.

        The cache (`index.json`, `index.npy`, and `index.hnsw` for large references) is keyed by
        the model, the reference size and a digest of its embeddings; a changed reference is
        indexed again. A folder that cannot be written only costs the cache (a warning).
        """
        embeddings = np.ascontiguousarray(bundle.reference.obsm["X_scquery"], dtype=np.float32)
        key = {
            "model_id": bundle.model_id,
            "n_cells": int(len(embeddings)),
            "digest": hashlib.sha256(embeddings).hexdigest(),
            "exact": len(embeddings) <= exact_max_cells,
            "seed": seed,
        }
        folder = Path(path) if path is not None else None
        cached = folder is not None and _read_meta(folder).get("key") == key
        if cached:
            index = cls._load(folder, embeddings, key, seed)
            if index is not None:
                return index
        index = cls(embeddings, exact_max_cells=exact_max_cells, seed=seed)
        if folder is not None:
            try:
                index._save(folder, key)
            except OSError as error:
                warnings.warn(f"The query index could not be cached in {folder} ({error}).", stacklevel=2)
        return index

    @classmethod
    def _load(cls, folder, embeddings, key, seed):
        index = cls.__new__(cls)
        index.embeddings, index.exact, index.seed = embeddings, key["exact"], seed
        index.n_threads = os.cpu_count() or 1
        index.ef = {int(k): v for k, v in _read_meta(folder).get("ef", {}).items()}
        try:
            index.nearest_distances = np.load(folder / INDEX_CALIBRATION)
            if index.exact:
                index._search = NearestNeighbors(metric="euclidean").fit(embeddings)
            else:
                index._search = hnswlib.Index(space="l2", dim=embeddings.shape[1])
                index._search.load_index(str(folder / INDEX_HNSW), max_elements=len(embeddings))
        except (OSError, ValueError, RuntimeError):
            return None
        if len(index.nearest_distances) != len(embeddings):
            return None
        return index

    def _save_calibration(self, tmp):
        with open(tmp, "wb") as file:
            np.save(file, self.nearest_distances)

    def _save(self, folder, key):
        """Write the cache; the metadata goes last, so a half-written cache is never used."""
        (folder / INDEX_META).unlink(missing_ok=True)
        write_atomically(folder / INDEX_CALIBRATION, self._save_calibration)
        if not self.exact:
            write_atomically(folder / INDEX_HNSW, lambda tmp: self._search.save_index(tmp))
        meta = {"key": key, "ef": {str(k): v for k, v in self.ef.items()}}
        write_atomically(folder / INDEX_META, lambda tmp: Path(tmp).write_text(json.dumps(meta)))


def _read_meta(folder):
    try:
        return json.loads((folder / INDEX_META).read_text())
    except (OSError, ValueError):
        return {}
