"""Degenerate queries answer, never crash: all-zero cells, a handful of cells, one cell type, identical
cells, one gene left. Each cell gets a prediction, or Unknown with its reason, or the query one clear
sentence."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from scquery.errors import TooFewGenes
from scquery.query import UNKNOWN, cluster_query, query


def answered(adata):
    """Every cell predicted or Unknown with a reason (and only Unknown cells have one)."""
    prediction = adata.obs["scquery_prediction"].astype(str)
    reason = adata.obs["scquery_unknown_reason"].astype(str)
    assert prediction.notna().all() and len(prediction) == adata.n_obs
    assert ((prediction == UNKNOWN) == (reason != "")).all()
    return prediction, reason


def test_all_zero_cells_are_unknown_with_their_reason(bundle, split):
    zero = split[1][:50].copy()
    zero.X = sp.csr_matrix(zero.shape, dtype=np.float32)
    query(zero, bundle)
    prediction, reason = answered(zero)
    assert (prediction == UNKNOWN).all() and (reason == "no reference genes").all()


def test_zero_cells_among_others_are_unknown_and_the_others_answered(bundle, split):
    mixed = split[1][:60].copy()
    X = mixed.X.tolil()
    X[:20] = 0
    mixed.X = X.tocsr()
    query(mixed, bundle)
    prediction, reason = answered(mixed)
    assert (reason[:20] == "no reference genes").all()
    assert (prediction[20:] != UNKNOWN).any()


@pytest.mark.parametrize("n", [1, 2, 10])
def test_a_query_of_a_few_cells_is_answered(bundle, split, n):
    few = split[1][:n].copy()
    query(few, bundle)
    answered(few)


def test_a_query_of_one_cell_type_is_answered(bundle, split):
    one = split[1][split[1].obs["bulk_labels"] == "CD14+ Monocyte"].copy()
    query(one, bundle)
    prediction, _ = answered(one)
    assert (prediction == "CD14+ Monocyte").mean() > 0.5


def test_identical_cells_are_answered(bundle, split):
    same = split[1][[0] * 10].copy()
    same.obs_names_make_unique()
    query(same, bundle)
    prediction, _ = answered(same)
    assert prediction.nunique() == 1


def test_one_gene_left_is_one_sentence_or_with_min_overlap_0_an_answer(bundle, split):
    one_gene = split[1][:40, [bundle.genes[0]]].copy()
    with pytest.raises(
        TooFewGenes,
        match=r"shares only 1 of 765 reference genes .*; check the gene naming.*lower min_overlap",
    ) as refused:
        query(one_gene, bundle)
    assert refused.value.option == "min_overlap"
    carried = pickle.loads(pickle.dumps(refused.value))  # as from a worker process
    assert (str(carried), carried.option) == (str(refused.value), "min_overlap")
    query(one_gene, bundle, min_overlap=0)
    _, reason = answered(one_gene)
    silent = np.asarray(one_gene.X.sum(axis=1)).ravel() == 0
    assert silent.any() and (reason[silent] == "no reference genes").all()


def test_clusters_of_cells_without_values_or_differences():
    assert list(cluster_query(sp.csr_matrix((5, 4), dtype=np.float32), resolution=1.0, seed=0)) == [0] * 5
    assert list(cluster_query(np.ones((6, 3), dtype=np.float32), resolution=1.0, seed=0)) == [0] * 6
    values = np.zeros((5, 3), dtype=np.float32)
    values[:3, 0] = [1, 2, 3]
    codes = cluster_query(values, resolution=1.0, seed=0)
    assert len(set(codes[:3]) & set(codes[3:])) == 0 and len(set(codes[3:])) == 1
