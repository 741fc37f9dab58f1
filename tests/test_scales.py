"""Input scales: each is recognized, and converted to the reference's scale or refused."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import fit_values, process_like, shared_file

from scquery.errors import ScqueryError
from scquery.preprocessing.scales import describe_values, detect_values


def _counts(n_cells=200, n_genes=300, seed=0):
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.3, 3.0, size=(n_cells, 1))
    mean = rng.gamma(0.6, 2.0, size=(1, n_genes))
    X = rng.poisson(depth * mean).astype(np.float32)
    X[:, 0] += 1  # no empty cell
    return sp.csr_matrix(X)


def _scaled(counts, total):
    sums = np.asarray(counts.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(total / sums) @ counts, dtype=np.float32)


def _log(matrix, function):
    out = matrix.copy()
    out.data = function(out.data.astype(np.float64)).astype(np.float32)
    return out


def scales(counts):
    """The same cells as counts and in every other scale a user may have them."""
    cpm = _scaled(counts, 1e6)
    return {
        "counts": counts,
        "log1p CP10k": _log(_scaled(counts, 1e4), np.log1p),
        "linear CP10k": _scaled(counts, 1e4),
        "CPM": cpm,
        "log2(CPM+1)": _log(cpm, lambda x: np.log2(1 + x)),
        "log10(CPM+1)": _log(cpm, lambda x: np.log10(1 + x)),
        "log1p counts": _log(counts, np.log1p),
    }


EXPECTED = {
    "counts": ("counts", None, None),
    "log1p CP10k": ("normalized", "e", 1e4),
    "linear CP10k": ("normalized", None, 1e4),
    "CPM": ("normalized", None, 1e6),
    "log2(CPM+1)": ("normalized", "2", 1e6),
    "log10(CPM+1)": ("normalized", "10", 1e6),
    "log1p counts": ("counts", "e", None),
}


def _adata(X, genes=None):
    genes = genes or [f"G{i}" for i in range(X.shape[1])]
    obs = pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])])
    return ad.AnnData(sp.csr_matrix(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=genes))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_scale_is_recognized(name):
    found = detect_values(scales(_counts())[name])
    values, base, total = EXPECTED[name]
    assert (found["values"], found["log_base"]) == (values, base)
    if total is None:
        assert found["target_sum"] is None
    else:
        assert found["target_sum"] == pytest.approx(total, rel=1e-3)
    assert describe_values(found)


def test_every_convertible_scale_gives_the_counts_matrix():
    counts = _counts()
    _, _, record = fit_values(_adata(counts), min_genes=1, min_cells=1, n_top_genes=100)
    expected, _ = process_like(_adata(counts), record)
    for name, X in scales(counts).items():
        processed, alignment = process_like(_adata(X), record)
        np.testing.assert_allclose(processed.toarray(), expected.toarray(), rtol=1e-6, atol=1e-6)
        assert alignment.values["values"] == EXPECTED[name][0], name


def test_tpm_like_values_are_renormalized():
    counts = _counts()
    lengths = np.random.default_rng(1).uniform(0.5, 5.0, counts.shape[1])
    tpm = _scaled(sp.csr_matrix(counts @ sp.diags(1 / lengths)), 1e6)
    found = detect_values(tpm)
    assert found["values"] == "normalized" and found["log_base"] is None
    assert found["target_sum"] == pytest.approx(1e6, rel=1e-3)
    _, _, record = fit_values(_adata(counts), min_genes=1, min_cells=1, n_top_genes=100)
    processed, _ = process_like(_adata(tpm), record)
    totals = np.expm1(processed.toarray().astype(np.float64))
    # normalized on all of its own genes: the selected genes hold part of each cell's 10,000
    assert (totals.sum(axis=1) <= 1e4 * (1 + 1e-5)).all() and totals.sum() > 0


def test_scaled_values_are_refused_in_one_sentence():
    counts = _counts()
    z = sc.pp.scale(np.log1p(counts.toarray()), copy=True)
    assert detect_values(z)["values"] == "scaled"
    _, _, record = fit_values(_adata(counts), min_genes=1, min_cells=1, n_top_genes=100)
    query = _adata(z)
    query.uns["scquery"] = {"source": "z.h5ad"}
    with pytest.raises(ScqueryError, match=r"values of z.h5ad are centred or scaled.*--layer/--use-raw"):
        process_like(query, record)
    with pytest.raises(ScqueryError, match="centred or scaled"):
        fit_values(query, min_genes=1)


def test_unrecognized_values_warn():
    rng = np.random.default_rng(0)
    X = sp.random(100, 50, density=0.3, random_state=0, format="csr") * 3
    assert detect_values(X)["values"] == "unrecognized"
    _, _, record = fit_values(_adata(_counts(100, 50)), min_genes=1, min_cells=1, n_top_genes=20)
    with pytest.warns(UserWarning, match="neither counts nor counts normalized"):
        process_like(_adata(X + sp.csr_matrix(rng.uniform(0, 1e-3, X.shape) * (X.toarray() > 0))), record)


def test_merged_datasets_are_recognized_each_on_its_own():
    counts = _counts()
    first, second = _adata(counts[:100]), _adata(_log(_scaled(counts[100:], 1e4), np.log1p))
    second.obs_names = [f"d{i}" for i in range(100)]
    merged = ad.concat([first, second], label="dataset", keys=["a", "b"])
    _, _, record = fit_values(_adata(counts), min_genes=1, min_cells=1, n_top_genes=100)
    processed, alignment = process_like(merged, record)
    expected, _ = process_like(_adata(counts), record)
    np.testing.assert_allclose(processed.toarray(), expected.toarray(), rtol=1e-6, atol=1e-6)
    found = alignment.values
    assert found["a"]["values"] == "counts" and found["b"]["log_base"] == "e"


def test_all_zero_cells_stay_zero():
    counts = _counts(50, 40).toarray()
    counts[:3] = 0
    _, _, record = fit_values(_adata(_counts(50, 40)), min_genes=1, min_cells=1, n_top_genes=20)
    processed, _ = process_like(_adata(counts), record)
    assert np.isfinite(processed.toarray()).all() and processed[:3].nnz == 0


def test_real_scales_pbmc68k_raw_is_log_normalized():
    raw = sc.datasets.pbmc68k_reduced().raw.X
    found = detect_values(raw)
    assert (found["values"], found["log_base"], found["target_sum"]) == ("normalized", "e", None)
    assert detect_values(sc.datasets.pbmc68k_reduced().X)["values"] == "scaled"


def test_real_scales_on_baron_and_pbmc3k():
    baron = ad.read_h5ad(shared_file("baron_human_pancreas.h5ad"))[:300]
    counts = sp.csr_matrix(baron.X, dtype=np.float32)
    keep = np.flatnonzero(np.asarray((counts > 0).sum(axis=0)).ravel() >= 3)
    genes = list(baron.var_names[keep])
    _, _, record = fit_values(_adata(counts[:, keep], genes), min_genes=1, n_top_genes=500)
    expected, _ = process_like(_adata(counts, list(baron.var_names)), record)
    for name, X in scales(counts).items():
        found = detect_values(X)
        assert (found["values"], found["log_base"]) == EXPECTED[name][:2], name
        processed, _ = process_like(_adata(X, list(baron.var_names)), record)
        np.testing.assert_allclose(processed.toarray(), expected.toarray(), rtol=1e-5, atol=1e-5)
    pbmc3k = ad.read_h5ad(shared_file("pbmc3k.h5ad"))
    found = detect_values(pbmc3k.X)
    assert (found["values"], found["log_base"]) == ("normalized", "e")
    assert found["target_sum"] == pytest.approx(1e4, rel=1e-3)
    assert detect_values(pbmc3k.layers["counts"])["values"] == "counts"


def test_values_normalized_over_more_genes_keep_their_scale():
    counts = _counts()
    subset = _log(_scaled(counts, 1e4), np.log1p)[:, :150]  # log1p CP10k of all genes, then a subset
    found = detect_values(subset)
    assert (found["values"], found["log_base"], found["target_sum"]) == ("normalized", "e", None)
    genes = [f"G{i}" for i in range(150)]
    _, _, record = fit_values(_adata(counts), min_genes=1, min_cells=1, genes=genes)
    processed, alignment = process_like(_adata(subset, genes), record)
    np.testing.assert_allclose(processed.toarray(), subset.toarray(), rtol=1e-5, atol=1e-5)
    assert alignment.values["assumed_target_sum"] == 1e4
    with pytest.warns(UserWarning, match="total is unknown; it is taken as 1e\\+06"):
        process_like(_adata(_scaled(counts, 1e6)[:, :150], genes), record)


def test_describe_values_in_a_few_words():
    assert describe_values({"values": "counts", "log_base": None}) == "counts"
    assert describe_values({"values": "normalized", "target_sum": 10_000.0, "log_base": "e"}) == (
        "log(1 + normalized values (total 1e+04 per cell))"
    )
    assert describe_values({"values": "normalized", "target_sum": 1e6, "log_base": "2"}) == (
        "log2(1 + normalized values (total 1e+06 per cell))"
    )
    assert describe_values({"values": "scaled"}) == "scaled"
