"""Preprocessing a reference (`fit_reference`), processing a query like it (`apply_record`), and
aligning genes."""

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import fit_values, process_like, shared_file

from scquery.datasets import pbmc68k_split
from scquery.errors import ScqueryError
from scquery.io import read
from scquery.options import InputOptions
from scquery.preprocessing.align import align_genes
from scquery.preprocessing.scales import detect_values
from scquery.values import select_values


@pytest.fixture(scope="module")
def pbmc68k():
    return pbmc68k_split(query_fraction=0.3, seed=0)


@pytest.fixture(scope="module")
def pbmc3k():
    counts = read(shared_file("pbmc3k.h5ad"))
    return ad.AnnData(counts.layers["counts"], obs=counts.obs, var=counts.var, uns=counts.uns)


def fit(adata, **options):
    """`(X, obs, record)`: the processed reference, its kept cells' annotations and the record."""
    X, kept, record = fit_values(adata, **options)
    return X, adata.obs.iloc[kept], record


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
    result, obs, record = fit(reference, min_genes=10, n_top_genes=300)
    assert (reference.X != before).nnz == 0  # the input is not modified
    json.dumps(record)
    assert record["values"] == {
        "values": "normalized", "log_base": "e", "target_sum": None, "assumed_target_sum": 1e4
    }  # fmt: skip
    assert record["gene_selection"] == "highly_variable" and len(record["genes"]) == 300
    assert result.shape == (len(obs), 300)
    assert result.format == "csr" and result.dtype == np.float32
    # Values log-normalized over more genes than the data holds keep their scale (total 1e4 assumed).
    np.testing.assert_allclose(
        result.toarray(), reference[obs.index, record["genes"]].X.toarray(), rtol=1e-5, atol=1e-5
    )
    # The query is processed identically: the same cells give the same matrix.
    again, alignment = process_like(reference, record)
    assert alignment.overlap == {"n_reference_genes": 300, "n_shared": 300, "fraction": 1.0}
    np.testing.assert_array_equal(again.toarray(), result.toarray())
    processed, _ = process_like(query, record)
    assert processed.shape == (query.n_obs, 300)


def test_n_top_genes_is_capped(pbmc68k):
    result, _, record = fit(pbmc68k[0], min_genes=10, min_cells=1, n_top_genes=5000)
    assert record["gene_selection"] == "all"
    assert len(record["genes"]) == result.shape[1] <= pbmc68k[0].n_vars


def test_fit_and_apply_on_pbmc3k_counts(pbmc3k):
    result, obs, record = fit(pbmc3k, max_pct_mito=5, scale=True)
    json.dumps(record)
    assert record["values"]["values"] == "counts" and record["normalized"] and record["log1p"]
    assert len(record["genes"]) == 2000 and len(record["scale"]["mean"]) == 2000
    cells = obs.index
    counts = pbmc3k[cells].X
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64)
    columns = pbmc3k.var_names.get_indexer(record["genes"])
    expected = np.log1p(counts[:, columns].toarray() / totals * 1e4)
    np.testing.assert_allclose(result.toarray(), expected, rtol=1e-5, atol=1e-5)
    mito = np.flatnonzero(pbmc3k.var_names.str.startswith("MT-"))
    assert mito.size and (np.asarray(counts[:, mito].sum(axis=1)) / totals <= 0.05).all()
    # A query processed like the reference gives the reference's matrix for the same cells.
    query, alignment = process_like(pbmc3k[cells], record)
    assert alignment.overlap["fraction"] == 1.0
    np.testing.assert_array_equal(query.toarray(), result.toarray())
    # Preprocessed values are recognized as log1p(normalized counts) and give the same matrix back
    # when normalized on the same genes.
    again = pbmc3k[cells].copy()
    again.X = sp.csr_matrix(_log1p_cp10k(again.X))
    refit, _, second = fit(again, min_genes=1, min_cells=0, genes=record["genes"])
    assert second["values"]["log_base"] == "e" and second["values"]["target_sum"] == pytest.approx(1e4)
    np.testing.assert_allclose(refit.toarray(), result.toarray(), rtol=1e-5, atol=1e-5)


def test_scale_statistics_match_scanpy(pbmc68k):
    result, _, record = fit(pbmc68k[0], min_genes=10, n_top_genes=100, scale=True)
    assert sp.issparse(result)
    expected = sc.pp.scale(result.toarray(), copy=True)
    scaled = (result.toarray() - record["scale"]["mean"]) / np.asarray(record["scale"]["std"])
    np.testing.assert_allclose(scaled, expected, atol=1e-4)


def test_mito_filter_keeps_obs():
    adata = _counts(genes=[f"G{i}" for i in range(38)] + ["MT-CO1", "mt-Nd1"])
    X = adata.X.toarray()
    X[:10, -2:] = 500
    adata.X = sp.csr_matrix(X)
    adata.obs["n_genes"] = -1
    result, obs, record = fit(adata, min_genes=5, max_pct_mito=20, n_top_genes=10)
    assert result.shape[0] == 50 and record["qc"]["n_cells_after"] == 50
    assert not set(obs.index) & {f"c{i}" for i in range(10)}
    assert list(obs.columns) == ["label", "n_genes"] and (obs["n_genes"] == -1).all()


def test_qc_removing_everything_raises():
    adata = _counts()
    adata.uns["scquery"] = {"source": "tiny.h5ad"}
    with pytest.raises(ScqueryError, match="No cells of tiny.h5ad pass quality control"):
        fit(adata, min_genes=200)
    with pytest.raises(ScqueryError, match="No genes of tiny.h5ad are expressed in 100"):
        fit(adata, min_genes=1, min_cells=100)


def test_scaled_values_are_refused(pbmc68k):
    scaled = sc.datasets.pbmc68k_reduced()
    assert detect_values(scaled.X)["values"] == "scaled"
    _, _, record = fit(pbmc68k[0], min_genes=10, n_top_genes=200)
    with pytest.raises(ScqueryError, match="centred or scaled"):
        process_like(scaled, record, min_overlap=0.1)


def test_query_counts_are_normalized_on_their_own_genes():
    reference = _counts(seed=1)
    _, _, record = fit(reference, min_genes=1, n_top_genes=10)
    query = _counts(seed=2)[:, ::-1].copy()  # other cells, genes in reverse order
    processed, _ = process_like(query, record)
    counts = query.X.toarray()
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    expected = expected[:, query.var_names.get_indexer(record["genes"])]
    np.testing.assert_allclose(processed.toarray(), expected, rtol=1e-5)


# Gene alignment


def _genes(names, values=None, gene_key=None):
    """The `Cells` of three cells of these gene names (or of the var column `gene_key`)."""
    values = np.arange(1, len(names) + 1, dtype=np.float32)[None, :] if values is None else values
    adata = ad.AnnData(sp.csr_matrix(np.repeat(values, 3, axis=0)), var=pd.DataFrame(index=names))
    adata.var["gene_ids"] = [f"ENSG0{i + 1}" for i in range(len(names))]
    return select_values(adata, layer=None, use_raw=False, gene_key=gene_key)


def align(cells, genes, min_overlap=InputOptions().min_overlap):
    return align_genes(cells, genes, min_overlap=min_overlap)


def test_align_reorders_and_zero_fills():
    aligned, shared, overlap = align(_genes(["A", "B", "C", "D", "E"]), ["E", "C", "A", "B", "Z"])
    assert overlap == {"n_reference_genes": 5, "n_shared": 4, "fraction": 0.8}
    assert list(shared) == [True, True, True, True, False]
    assert sp.issparse(aligned) and aligned.format == "csr" and aligned.dtype == np.float32
    np.testing.assert_array_equal(aligned.toarray()[0], [5, 3, 1, 2, 0])


def test_align_case_insensitive_and_ensembl_versions():
    cells = _genes(["cd3e", "ENSG00000123.12", "Ms4a1", "ENSG00000999"])
    reference = ["CD3E", "ENSG00000123", "MS4A1", "ENSG00000999.3"]
    aligned, _, overlap = align(cells, reference)
    assert overlap["fraction"] == 1.0
    np.testing.assert_array_equal(aligned.toarray()[0], [1, 2, 3, 4])
    exact = _genes(["cd3e", "CD3E"])
    np.testing.assert_array_equal(align(exact, ["CD3E"])[0].toarray()[0], [2])


def test_align_on_gene_key():
    aligned, _, _ = align(_genes(["CD3E", "MS4A1"], gene_key="gene_ids"), ["ENSG02", "ENSG01"])
    np.testing.assert_array_equal(aligned.toarray()[0], [2, 1])
    with pytest.raises(ScqueryError, match="gene column 'ids' is not in the var"):
        _genes(["CD3E", "MS4A1"], gene_key="ids")


def test_align_overlap_limits():
    cells = _genes(["A", "B", "C", "D"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        align(cells, list("ABCDE"))  # 80 %: no warning
    with pytest.warns(UserWarning, match=r"shares 4 of 6 reference genes \(66.7 %\)"):
        align(cells, list("ABCDEF"))
    with pytest.raises(ScqueryError, match=r"only 4 of 9 reference genes \(44.4 %"):
        align(cells, list("ABCDEFGHI"))
    with pytest.raises(ScqueryError, match="shares no genes with the reference"):
        align(cells, ["X", "Y"], min_overlap=0.0)


def test_values_of_every_size_are_recognized_without_numpy_warnings():
    """Large normalized values (gene-length-normalized, unlogged) tried on a log-10 scale overflow
    float64 in the within-cell ratios: no warning may reach the user for that."""
    rng = np.random.default_rng(0)
    values = sp.random(200, 500, density=0.1, format="csr", random_state=0, dtype=np.float32)
    values.data = (rng.uniform(0, 400, values.nnz)).astype(np.float32)
    values.data[::7] = 0.001
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detect_values(values)["values"] == "unrecognized"
