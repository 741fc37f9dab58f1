"""Preprocessing a reference, processing a query like it, and aligning genes."""

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import shared_file

from scquery.datasets import pbmc68k_split
from scquery.errors import ScqueryError
from scquery.io import read, select_values
from scquery.options import InputOptions
from scquery.preprocess import (
    align_genes,
    apply_preprocess,
    detect_values,
    fit_preprocess,
)


@pytest.fixture(scope="module")
def pbmc68k():
    return pbmc68k_split(query_fraction=0.3, seed=0)


@pytest.fixture(scope="module")
def pbmc3k():
    return select_values(read(shared_file("pbmc3k.h5ad")), layer="counts")


def _log1p_cp10k(counts):
    counts = np.asarray(counts.toarray(), dtype=np.float64)
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)


def _counts(n_cells=60, genes=None, seed=0):
    genes = genes or [f"G{i}" for i in range(40)]
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, size=(n_cells, len(genes))).astype(np.float32)
    cells = [f"c{i}" for i in range(n_cells)]
    obs = pd.DataFrame({"label": rng.choice(["a", "b"], n_cells)}, index=cells)
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))


def test_pbmc68k_split(pbmc68k):
    reference, query = pbmc68k
    assert (reference.n_obs, query.n_obs) == (490, 210)
    assert set(reference.obs_names).isdisjoint(query.obs_names)
    assert set(reference.obs["dataset"]) == {"pbmc68k_reference"}
    assert set(query.obs["dataset"]) == {"pbmc68k_heldout"}
    assert reference.X.format == "csr" and reference.X.dtype == np.float32
    assert detect_values(reference.X)["log_base"] == "e"
    shares = reference.obs["bulk_labels"].value_counts(normalize=True)
    query_shares = query.obs["bulk_labels"].value_counts(normalize=True)
    assert np.abs(shares - query_shares[shares.index]).max() < 0.02  # stratified
    again, _ = pbmc68k_split(query_fraction=0.3, seed=0)
    assert list(again.obs_names) == list(reference.obs_names)
    other, _ = pbmc68k_split(query_fraction=0.3, seed=1)
    assert list(other.obs_names) != list(reference.obs_names)


def test_fit_on_log_normalized_pbmc68k(pbmc68k):
    reference, query = pbmc68k
    before = reference.X.copy()
    result, record = fit_preprocess(reference, min_genes=10, n_top_genes=300)
    assert (reference.X != before).nnz == 0  # the input is not modified
    json.dumps(record)
    assert record["values"] == {
        "values": "normalized", "log_base": "e", "target_sum": None, "assumed_target_sum": 1e4
    }  # fmt: skip
    assert record["gene_selection"] == "highly_variable" and len(record["genes"]) == 300
    assert list(result.var_names) == record["genes"]
    assert result.X.format == "csr" and result.X.dtype == np.float32
    assert list(result.obs.columns) == list(reference.obs.columns)
    assert result.obs.equals(reference.obs.loc[result.obs_names])
    # Values log-normalized over more genes than the data holds keep their scale (total 1e4 assumed).
    np.testing.assert_allclose(
        result.X.toarray(), reference[result.obs_names, record["genes"]].X.toarray(), rtol=1e-5, atol=1e-5
    )
    # The query is processed identically: the same cells give the same matrix.
    again, overlap = apply_preprocess(reference, record)
    assert overlap == {"n_reference_genes": 300, "n_shared": 300, "fraction": 1.0}
    np.testing.assert_array_equal(again.X.toarray(), result.X.toarray())
    processed, _ = apply_preprocess(query, record)
    assert processed.n_obs == query.n_obs and list(processed.obs.columns) == list(query.obs)


def test_n_top_genes_is_capped(pbmc68k):
    result, record = fit_preprocess(pbmc68k[0], min_genes=10, min_cells=1, n_top_genes=5000)
    assert record["gene_selection"] == "all"
    assert len(record["genes"]) == result.n_vars <= pbmc68k[0].n_vars


def test_fit_and_apply_on_pbmc3k_counts(pbmc3k):
    result, record = fit_preprocess(pbmc3k, max_pct_mito=5, scale=True)
    json.dumps(record)
    assert record["values"]["values"] == "counts" and record["normalized"] and record["log1p"]
    assert len(record["genes"]) == 2000 and len(record["scale"]["mean"]) == 2000
    cells = result.obs_names
    counts = pbmc3k[cells].X
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64)
    columns = pbmc3k.var_names.get_indexer(record["genes"])
    expected = np.log1p(counts[:, columns].toarray() / totals * 1e4)
    np.testing.assert_allclose(result.X.toarray(), expected, rtol=1e-5, atol=1e-5)
    mito = np.flatnonzero(pbmc3k.var_names.str.startswith("MT-"))
    assert mito.size and (np.asarray(counts[:, mito].sum(axis=1)) / totals <= 0.05).all()
    # A query processed like the reference gives the reference's matrix for the same cells.
    query, overlap = apply_preprocess(pbmc3k[cells], record)
    assert overlap["fraction"] == 1.0
    np.testing.assert_array_equal(query.X.toarray(), result.X.toarray())
    # Preprocessed values are recognized as log1p(normalized counts) and give the same matrix back
    # when normalized on the same genes.
    again = pbmc3k[cells].copy()
    again.X = sp.csr_matrix(_log1p_cp10k(again.X))
    refit, second = fit_preprocess(again, min_genes=1, min_cells=0, genes=record["genes"])
    assert second["values"]["log_base"] == "e" and second["values"]["target_sum"] == pytest.approx(1e4)
    np.testing.assert_allclose(refit.X.toarray(), result.X.toarray(), rtol=1e-5, atol=1e-5)


def test_scale_statistics_match_scanpy(pbmc68k):
    result, record = fit_preprocess(pbmc68k[0], min_genes=10, n_top_genes=100, scale=True)
    assert sp.issparse(result.X)
    expected = sc.pp.scale(result.X.toarray(), copy=True)
    scaled = (result.X.toarray() - record["scale"]["mean"]) / np.asarray(record["scale"]["std"])
    np.testing.assert_allclose(scaled, expected, atol=1e-4)


def test_mito_filter_keeps_obs():
    adata = _counts(genes=[f"G{i}" for i in range(38)] + ["MT-CO1", "mt-Nd1"])
    X = adata.X.toarray()
    X[:10, -2:] = 500
    adata.X = sp.csr_matrix(X)
    adata.obs["n_genes"] = -1
    result, record = fit_preprocess(adata, min_genes=5, max_pct_mito=20, n_top_genes=10)
    assert result.n_obs == 50 and record["qc"]["n_cells_after"] == 50
    assert not set(result.obs_names) & {f"c{i}" for i in range(10)}
    assert list(result.obs.columns) == ["label", "n_genes"] and (result.obs["n_genes"] == -1).all()


def test_qc_removing_everything_raises():
    adata = _counts()
    adata.uns["scquery"] = {"source": "tiny.h5ad"}
    with pytest.raises(ScqueryError, match="No cells of tiny.h5ad pass quality control"):
        fit_preprocess(adata, min_genes=200)
    with pytest.raises(ScqueryError, match="No genes of tiny.h5ad are expressed in 100"):
        fit_preprocess(adata, min_genes=1, min_cells=100)


def test_scaled_values_are_refused(pbmc68k):
    scaled = sc.datasets.pbmc68k_reduced()
    assert detect_values(scaled.X)["values"] == "scaled"
    _, record = fit_preprocess(pbmc68k[0], min_genes=10, n_top_genes=200)
    with pytest.raises(ScqueryError, match="centred or scaled"):
        apply_preprocess(scaled, record, InputOptions(min_overlap=0.1))


def test_query_counts_are_normalized_on_their_own_genes():
    reference = _counts(seed=1)
    result, record = fit_preprocess(reference, min_genes=1, n_top_genes=10)
    query = _counts(seed=2)[:, ::-1].copy()  # other cells, genes in reverse order
    processed, _ = apply_preprocess(query, record)
    counts = query.X.toarray()
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    expected = expected[:, query.var_names.get_indexer(record["genes"])]
    np.testing.assert_allclose(processed.X.toarray(), expected, rtol=1e-5)


# Gene alignment


def _genes(names, values=None):
    values = np.arange(1, len(names) + 1, dtype=np.float32)[None, :] if values is None else values
    adata = ad.AnnData(sp.csr_matrix(np.repeat(values, 3, axis=0)), var=pd.DataFrame(index=names))
    adata.obs["label"] = ["x", "y", "z"]
    return adata


def test_align_reorders_and_zero_fills():
    adata = _genes(["A", "B", "C", "D", "E"])
    aligned, overlap = align_genes(adata, ["E", "C", "A", "B", "Z"])
    assert overlap == {"n_reference_genes": 5, "n_shared": 4, "fraction": 0.8}
    assert list(aligned.var_names) == ["E", "C", "A", "B", "Z"]
    assert sp.issparse(aligned.X) and aligned.X.format == "csr" and aligned.X.dtype == np.float32
    np.testing.assert_array_equal(aligned.X.toarray()[0], [5, 3, 1, 2, 0])
    assert list(aligned.obs["label"]) == ["x", "y", "z"]


def test_align_case_insensitive_and_ensembl_versions():
    adata = _genes(["cd3e", "ENSG00000123.12", "Ms4a1", "ENSG00000999"])
    reference = ["CD3E", "ENSG00000123", "MS4A1", "ENSG00000999.3"]
    aligned, overlap = align_genes(adata, reference)
    assert overlap["fraction"] == 1.0
    np.testing.assert_array_equal(aligned.X.toarray()[0], [1, 2, 3, 4])
    exact = _genes(["cd3e", "CD3E"])
    np.testing.assert_array_equal(align_genes(exact, ["CD3E"])[0].X.toarray()[0], [2])


def test_align_on_gene_key():
    adata = _genes(["CD3E", "MS4A1"])
    adata.var["gene_ids"] = ["ENSG01", "ENSG02"]
    aligned, _ = align_genes(adata, ["ENSG02", "ENSG01"], InputOptions(gene_key="gene_ids"))
    np.testing.assert_array_equal(aligned.X.toarray()[0], [2, 1])
    with pytest.raises(ScqueryError, match="gene column 'ids' is not in the var"):
        align_genes(adata, ["ENSG02"], InputOptions(gene_key="ids"))


def test_align_overlap_limits():
    adata = _genes(["A", "B", "C", "D"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        align_genes(adata, list("ABCDE"))  # 80 %: no warning
    with pytest.warns(UserWarning, match=r"shares 4 of 6 reference genes \(66.7 %\)"):
        align_genes(adata, list("ABCDEF"))
    with pytest.raises(ScqueryError, match=r"only 4 of 9 reference genes \(44.4 %"):
        align_genes(adata, list("ABCDEFGHI"))
    with pytest.raises(ScqueryError, match="shares no genes with the reference"):
        align_genes(adata, ["X", "Y"], InputOptions(min_overlap=0.0))


def test_values_of_every_size_are_recognized_without_numpy_warnings():
    """Large normalized values (gene-length-normalized, unlogged) tried on a log-10 scale overflow
    float64 in the within-cell ratios: no warning may reach the user for that."""
    from scquery.preprocess import detect_values

    rng = np.random.default_rng(0)
    values = sp.random(200, 500, density=0.1, format="csr", random_state=0, dtype=np.float32)
    values.data = (rng.uniform(0, 400, values.nnz)).astype(np.float32)
    values.data[::7] = 0.001
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detect_values(values)["values"] == "unrecognized"
