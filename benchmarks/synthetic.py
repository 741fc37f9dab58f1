"""Synthetic sparse counts with cell-type structure, built chunk by chunk (never dense in whole)."""

from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

CHUNK = 5000


def type_profiles(n_genes, n_types, *, profile_seed=0):
    """Mean expression of every gene in every type (n_types × n_genes), per cell of size factor 1.

    Gene means are log-normal (most genes low, a few high); each type scales every gene by a small
    random factor and has 5 % marker genes raised about e² times.
    """
    rng = np.random.default_rng(profile_seed)
    base = rng.lognormal(mean=-2.5, sigma=1.5, size=n_genes)
    profiles = base * np.exp(rng.normal(0.0, 0.3, size=(n_types, n_genes)))
    n_markers = max(1, n_genes // 20)
    for row in profiles:
        markers = rng.choice(n_genes, size=n_markers, replace=False)
        row[markers] *= np.exp(rng.normal(2.0, 0.5, size=n_markers))
    return profiles.astype(np.float32)


def synthetic_counts(n_cells, n_genes=2000, n_types=10, seed=0, *, dispersion=2.0, profile_seed=0, workers=1):
    """Negative-binomial counts of `n_cells` cells from `n_types` types, as CSR float32 AnnData.

    The types' mean profiles come from `profile_seed`, so draws with different `seed` are new cells
    of the same types (a reference and a query). Counts are gamma–Poisson with shape `dispersion`;
    cells get log-normal size factors. Labels are in `obs['cell_type']`. Only one chunk of
    `CHUNK` cells is ever dense (one per worker: `workers` threads draw chunks at once, each from
    its own seeded generator, so the counts are the same for any number of them).
    """
    profiles = type_profiles(n_genes, n_types, profile_seed=profile_seed)
    rng = np.random.default_rng([seed, n_cells])
    types = rng.integers(n_types, size=n_cells)
    size_factors = rng.lognormal(0.0, 0.3, size=n_cells).astype(np.float32)

    def chunk(index):
        start, stop = index * CHUNK, min((index + 1) * CHUNK, n_cells)
        chunk_rng = np.random.default_rng([seed, n_cells, index])
        mean = size_factors[start:stop, None] * profiles[types[start:stop]]
        rate = chunk_rng.gamma(dispersion, mean / dispersion)
        return sparse.csr_matrix(chunk_rng.poisson(rate).astype(np.float32))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        blocks = list(pool.map(chunk, range(-(-n_cells // CHUNK))))
    X = (
        sparse.vstack(blocks, format="csr", dtype=np.float32)
        if blocks
        else sparse.csr_matrix((0, n_genes), dtype=np.float32)
    )
    names = [f"type_{t}" for t in range(n_types)]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical.from_codes(types, categories=names)},
        index=[f"cell_{seed}_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    return ad.AnnData(X=X, obs=obs, var=var)


def synthetic_embeddings(n_cells, *, width=100, seed=0, shift=0.0, latent=20, n_types=50, with_types=False):
    """Embeddings like the network's (tanh units): `n_types` clusters of several spreads on a
    `latent`-dimensional manifold, mapped into `width` dimensions, with a little noise off it.

    The clusters come from a fixed seed, so draws with different `seed` are new cells of the same
    types; `shift` moves every cell off the reference (another study's cells). Built in chunks.
    With `with_types`, returns `(embeddings, each cell's cluster)`.
    """
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(n_types, latent))
    projection = rng.normal(0.0, 1.0 / np.sqrt(latent), size=(latent, width))
    spreads = rng.uniform(0.2, 0.6, size=n_types)
    draw = np.random.default_rng([seed, n_cells])
    out = np.empty((n_cells, width), dtype=np.float32)
    cell_types = np.empty(n_cells, dtype=np.int64)
    for start in range(0, n_cells, 20 * CHUNK):
        stop = min(start + 20 * CHUNK, n_cells)
        types = cell_types[start:stop] = draw.integers(n_types, size=stop - start)
        points = centres[types] + draw.normal(size=(stop - start, latent)) * spreads[types, None]
        noise = draw.normal(0.0, 0.05, size=(stop - start, width))
        out[start:stop] = np.tanh(points @ projection + noise + shift)
    return (out, cell_types) if with_types else out
