"""Peer methods, each given the same reference and query as scquery.

`.X` of both holds either raw counts or log1p(counts per 10k) (`values`), on the same genes in the
same order; labels are in `obs['label']`.
"""

import anndata as ad
import numpy as np
import scanpy as sc
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

N_TOP_GENES, N_PCS, N_NEIGHBORS = 2000, 50, 15


def log_normalized(adata, values):
    """A copy of `adata` holding log1p(counts per 10k) (unchanged if it holds them already)."""
    adata = adata.copy()
    if values == "counts":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    return adata


def reference_hvgs(reference_log, n_top_genes=N_TOP_GENES):
    """The reference's highly variable genes (scanpy's Seurat flavour on log-normalized data)."""
    if reference_log.n_vars <= n_top_genes:
        return list(reference_log.var_names)
    table = sc.pp.highly_variable_genes(reference_log, n_top_genes=n_top_genes, inplace=False)
    return list(reference_log.var_names[table["highly_variable"].to_numpy()])


def pca_knn(reference, query, *, values, seed=0, unlabelled=None):
    """What scanpy's ingest does: PCA of the reference's log-normalized HVGs, query cells projected
    on the reference's components, majority vote of their 15 nearest reference cells.

    (`sc.tl.ingest` itself fails with this environment's pynndescent, so the same model is built
    from `sc.pp.pca` and scikit-learn.) With `unlabelled` cells (same genes and values), the HVGs
    and the PCA are fitted on the reference and them together; only the reference votes.
    Returns predictions and the PCA embeddings.
    """
    ref_log, query_log = log_normalized(reference, values), log_normalized(query, values)
    fit_log = ref_log
    if unlabelled is not None and unlabelled.n_obs:
        fit_log = ad.concat([ref_log, log_normalized(unlabelled, values)])
    genes = reference_hvgs(fit_log)
    fit = fit_log[:, genes].copy()
    sc.pp.pca(fit, n_comps=min(N_PCS, fit.n_vars - 1, fit.n_obs - 1), random_state=seed)
    mean = np.asarray(fit.X.mean(axis=0)).ravel()
    ref_pca = fit.obsm["X_pca"][: ref_log.n_obs]
    query_pca = (query_log[:, genes].X.toarray() - mean) @ fit.varm["PCs"]
    vote = KNeighborsClassifier(n_neighbors=min(N_NEIGHBORS, ref_log.n_obs))
    vote.fit(ref_pca, ref_log.obs["label"].astype(str).to_numpy())
    return {
        "predictions": vote.predict(query_pca).astype(str),
        "reference_embedding": ref_pca,
        "query_embedding": query_pca,
    }


def logistic_regression(reference, query, *, values, seed=0):
    """CellTypist's model: logistic regression on scaled (clipped at 10) log-normalized HVGs."""
    ref_log, query_log = log_normalized(reference, values), log_normalized(query, values)
    genes = reference_hvgs(ref_log)
    scaler = StandardScaler()
    x_ref = np.clip(scaler.fit_transform(ref_log[:, genes].X.toarray()), None, 10)
    x_query = np.clip(scaler.transform(query_log[:, genes].X.toarray()), None, 10)
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    model.fit(x_ref, ref_log.obs["label"].astype(str).to_numpy())
    return {"predictions": model.predict(x_query)}
