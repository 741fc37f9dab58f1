"""Run CellTypist in its own environment (1.7.1 fails with scikit-learn >= 1.8).

Usage: `<celltypist python> celltypist_runner.py REFERENCE.h5ad QUERY.h5ad OUT.csv [--majority-voting]
[--convert] [--probability]`.
Both files hold log1p(counts per 10k) in `.X` and the reference's labels in `obs['label']`. CellTypist
insists that each cell's expm1 values sum to 10,000, so data restricted to a gene subset are
renormalized first. OUT.csv holds the predicted labels (best match) and, with `--majority-voting`,
a second column `majority_voting` (CellTypist's own over-clustering and majority vote); with
`--probability`, a column `probability`: each cell's highest probability, what CellTypist's own rejection
(`mode='prob match'`, `p_thres`) thresholds. With `--convert`,
the trained model is converted to the other species (`Model.convert()`: its built-in Ensembl 105 human-mouse
table, one-to-one orthologues only) before it annotates the query.
This file is a standalone script: it imports nothing from the project.
"""

import sys

import anndata as ad
import celltypist
import numpy as np
import scanpy as sc
import scipy.sparse as sp


def _renormalized(adata):
    adata.X = sp.csr_matrix(adata.X)
    totals = np.asarray(adata.X.expm1().sum(axis=1)).ravel()
    if np.allclose(totals, 1e4, rtol=1e-3):
        return adata
    adata = adata.copy()
    adata.X = adata.X.expm1()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def main(reference_path, query_path, out_path, *options):
    majority_voting = "--majority-voting" in options
    reference = _renormalized(ad.read_h5ad(reference_path))
    query = _renormalized(ad.read_h5ad(query_path))
    model = celltypist.train(reference, labels="label", n_jobs=2, max_iter=1000)
    if "--convert" in options:
        model.convert()
    predictions = celltypist.annotate(query, model=model, majority_voting=majority_voting)
    columns = ["predicted_labels"] + (["majority_voting"] if majority_voting else [])
    table = predictions.predicted_labels[columns].copy()
    if "--probability" in options:
        table["probability"] = predictions.probability_matrix.max(axis=1).to_numpy()
    table.to_csv(out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
