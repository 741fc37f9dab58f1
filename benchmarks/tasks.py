"""The quality tasks: reference/query splits of real labelled data (and one synthetic split).

Every split gives all methods the same two AnnData objects: `.X` holds either raw counts or
log1p(counts per 10k) (`Split.values`), both on the same genes in the same order, and `obs['label']`
holds the cell type. Query cells whose type the reference lacks are left out (they cannot be scored).
"""

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.model_selection import StratifiedKFold

from .synthetic import synthetic_counts

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

#: pbmc68k_reduced `bulk_labels` → pbmc3k `classified`; types with no counterpart are left out
#: (CD4+/CD25 T Reg, CD34+). pbmc3k's CD8 T covers naive and cytotoxic CD8 cells.
PBMC68K_TO_PBMC3K = {
    "CD14+ Monocyte": "CD14+ Mono",
    "CD19+ B": "B",
    "CD56+ NK": "NK",
    "Dendritic": "DC",
    "CD8+ Cytotoxic T": "CD8 T",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
    "CD4+/CD45RO+ Memory": "Memory CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "Naive CD4 T",
}


@dataclass
class Split:
    """One reference → query evaluation."""

    task: str
    fold: str
    reference: ad.AnnData
    query: ad.AnnData
    values: str  # "counts" or "log1p"


def data_dir():
    """The shared data folder next to the repository, or None when it is absent."""
    return DATA_DIR if DATA_DIR.is_dir() else None


def _labelled(X, obs_names, var_names, labels):
    obs = pd.DataFrame({"label": pd.Categorical(np.asarray(labels, dtype=str))}, index=obs_names)
    return ad.AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=var_names))


def _split(task, fold, data, labels, ref_rows, query_rows, values):
    """A split of one dataset, keeping only query cells whose type occurs in the reference."""
    labels = np.asarray(labels, dtype=str)
    query_rows = query_rows[np.isin(labels[query_rows], labels[ref_rows])]
    reference = _labelled(data.X[ref_rows], data.obs_names[ref_rows], data.var_names, labels[ref_rows])
    query = _labelled(data.X[query_rows], data.obs_names[query_rows], data.var_names, labels[query_rows])
    return Split(task, fold, reference, query, values)


def pbmc_split(folder):
    """pbmc3k (reference) → pbmc68k_reduced (query), on their shared genes, log1p per 10k.

    The query has no counts (`.raw` is log-normalized over the full 68k gene set), so both sides
    use their log-normalized values restricted to the shared genes.
    """
    ref = ad.read_h5ad(folder / "pbmc3k.h5ad")
    query = sc.datasets.pbmc68k_reduced().raw.to_adata()
    query.obs["bulk_labels"] = sc.datasets.pbmc68k_reduced().obs["bulk_labels"]
    genes = [gene for gene in query.var_names if gene in set(ref.var_names)]
    mapped = query.obs["bulk_labels"].astype(str).map(PBMC68K_TO_PBMC3K)
    keep = mapped.notna().to_numpy()
    reference = _labelled(ref[:, genes].X, ref.obs_names, genes, ref.obs["classified"])
    query = _labelled(query[keep][:, genes].X, query.obs_names[keep], genes, mapped[keep])
    return Split("pbmc3k→pbmc68k", "-", reference, query, "log1p")


def baron_splits(folder):
    """Baron human pancreas, raw counts, each donor held out in turn."""
    data = ad.read_h5ad(folder / "baron_human_pancreas.h5ad")
    donors = data.obs["donor"].astype(str).to_numpy()
    for donor in sorted(set(donors)):
        ref_rows, query_rows = np.flatnonzero(donors != donor), np.flatnonzero(donors == donor)
        yield _split("baron (donor out)", donor, data, data.obs["cell_type1"], ref_rows, query_rows, "counts")


def zeisel_splits(folder, level, *, n_folds=5, seed=0):
    """Zeisel mouse cortex, raw counts, stratified `n_folds`-fold cross-validation at `level`.

    The folds are stratified by the fine level (`level2class`), so both levels use the same folds.
    """
    data = ad.read_h5ad(folder / "zeisel_mouse_cortex.h5ad")
    data.X = data.layers["counts"]
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fine = data.obs["level2class"].astype(str).to_numpy()
    for fold, (ref_rows, query_rows) in enumerate(folds.split(fine, fine)):
        yield _split(f"zeisel {level}", str(fold), data, data.obs[level], ref_rows, query_rows, "counts")


def synthetic_split(n_reference=2000, n_query=1000):
    """Synthetic counts: reference and query from the same types (seeds 0 and 1)."""
    reference, query = synthetic_counts(n_reference, seed=0), synthetic_counts(n_query, seed=1)
    for adata in (reference, query):
        adata.obs["label"] = adata.obs.pop("cell_type").astype(str).astype("category")
    return Split("synthetic", "-", reference, query, "counts")


def splits(*, quick):
    """All splits of a run: quick runs a small synthetic task, full runs every real task (or the
    synthetic one where the shared data folder is absent)."""
    folder = data_dir()
    if quick or folder is None:
        yield synthetic_split(*((1000, 500) if quick else ()))
        return
    yield pbmc_split(folder)
    yield from baron_splits(folder)
    for level in ("level1class", "level2class"):
        yield from zeisel_splits(folder, level)
