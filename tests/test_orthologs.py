"""Queries of another species: gene maps (files, tables, dicts), the built-in human ↔ mouse orthologues,
species detection, the hint given a mouse query without either, and what is recorded."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scquery.errors import ScqueryError, TooFewGenes
from scquery.orthologs import GeneMap, builtin_map, detect_species, map_genes, read_gene_map
from scquery.preprocessing.align import reference_species

PAIRS = [("Cd3e", "CD3E"), ("Ms4a1", "MS4A1"), ("Cd8a", "CD8A")]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("named.csv", "note,reference_gene,query_gene\nx,CD3E,Cd3e\ny,MS4A1,Ms4a1\nz,CD8A,Cd8a\n"),
        ("named.tsv", "query_gene\treference_gene\nCd3e\tCD3E\nMs4a1\tMS4A1\nCd8a\tCD8A\n"),
        ("plain.csv", "mouse,human,extra\nCd3e,CD3E,1\nMs4a1,MS4A1,2\nCd8a,CD8A,3\nCd8a,CD8A,3\n"),
        ("plain.txt", "mouse\thuman\nCd3e\tCD3E\nMs4a1\tMS4A1\nCd8a\tCD8A\n"),
    ],
)
def test_gene_map_files_with_or_without_named_columns(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    found = read_gene_map(path)
    assert sorted(map(tuple, found.pairs.to_numpy())) == sorted(PAIRS)
    assert found.name == name and found.collapse == "mean"
    assert path.read_text() == text  # the user's file is left as it was


def test_gene_maps_from_a_dict_or_a_dataframe():
    from_dict = read_gene_map({"Cd3e": "CD3E", "Ms4a1": ["MS4A1"], "Cd8a": ("CD8A", "CD8B")})
    assert sorted(map(tuple, from_dict.pairs.to_numpy())) == sorted([*PAIRS, ("Cd8a", "CD8B")])
    frame = pd.DataFrame(PAIRS, columns=["a", "b"])
    assert sorted(map(tuple, read_gene_map(frame).pairs.to_numpy())) == sorted(PAIRS)


@pytest.mark.parametrize(
    ("text", "message"),
    [("only\nCd3e\n", "column"), ("a,b\n,\n", "no pairs")],
)
def test_unusable_gene_maps_are_refused_in_one_sentence(tmp_path, text, message):
    path = tmp_path / "map.csv"
    path.write_text(text)
    with pytest.raises(ScqueryError, match=message):
        read_gene_map(path)
    with pytest.raises(ScqueryError, match="does not exist"):
        read_gene_map(tmp_path / "missing.csv")
    with pytest.raises(ScqueryError, match="collapse"):
        GeneMap(pd.DataFrame(PAIRS, columns=["query_gene", "reference_gene"]), "x", collapse="max")


def _mapped(collapse):
    """A cell × 4 genes (log1p values) mapped: a → A (1:1), b and c → B (N:1), d → D1 and D2 (1:N)."""
    linear = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 0.0]])
    X = sp.csr_matrix(np.log1p(linear))
    pairs = pd.DataFrame(
        [("a", "A"), ("b", "B"), ("c", "B"), ("d", "D1"), ("d", "D2"), ("e", "A")],
        columns=["query_gene", "reference_gene"],
    )
    mapped, genes, record = map_genes(
        X, ["a", "b", "c", "d"], GeneMap(pairs, "test", collapse), ["A", "B", "D1", "D2", "Z"]
    )
    assert sp.issparse(mapped) and mapped.dtype == np.float32
    return pd.DataFrame(np.expm1(mapped.toarray()), columns=genes), record


def test_one_to_many_fills_each_and_many_to_one_is_averaged_summed_or_dropped():
    summed, record = _mapped("sum")
    assert list(summed.columns) == ["A", "B", "D1", "D2"]
    np.testing.assert_allclose(summed.to_numpy(), [[1, 5, 4, 4], [0, 5, 0, 0]], rtol=1e-5)
    assert record == {
        "name": "test",
        "collapse": "sum",
        "species": None,
        "n_pairs": 6,
        "one_to_one": 1,  # a → A ('e' is not in the query)
        "one_to_many": 1,  # d
        "many_to_one": 1,  # B
        "n_dropped": 0,
    }
    averaged, _ = _mapped("mean")
    np.testing.assert_allclose(averaged.to_numpy(), [[1, 2.5, 4, 4], [0, 2.5, 0, 0]], rtol=1e-5)
    dropped, record = _mapped("drop")
    assert list(dropped.columns) == ["A"] and record["n_dropped"] == 4
    np.testing.assert_allclose(dropped.to_numpy(), [[1], [0]], rtol=1e-5)


@pytest.mark.parametrize(
    ("names", "species"),
    [
        (["CD3E", "MS4A1", "C1orf112", "MT-CO1", "HLA-DRA"], "human"),
        (["Cd3e", "Ms4a1", "mt-Co1", "1700001C19Rik", "H2-Ab1"], "mouse"),
        (["ENSG00000198851.10", "ENSG00000156738"], "human"),
        (["ENSMUSG00000032094", "ENSMUSG00000024673"], "mouse"),
        (["gene0", "gene1", "gene2"], None),
        (["CD3E", "Cd3e", "CD8A", "Cd8a"], None),
    ],
)
def test_species_is_told_by_the_gene_names(names, species):
    assert detect_species(names) == species


def test_the_built_in_table_maps_symbols_and_human_ensembl_ids():
    to_human = builtin_map("mouse", "human").pairs
    assert {"CD3E", "ENSG00000198851"} <= set(
        to_human.loc[to_human["query_gene"] == "Cd3e", "reference_gene"]
    )
    to_mouse = builtin_map("human", "mouse").pairs
    assert set(to_mouse.loc[to_mouse["query_gene"] == "ENSG00000198851", "reference_gene"]) == {"Cd3e"}
    with pytest.raises(ScqueryError, match="no built-in orthologues"):
        builtin_map("zebrafish", "human")


def to_mouse(adata):
    """`adata` with its genes renamed to their one-to-one mouse orthologues, the others left out; and
    the table of those orthologues (columns query_gene: human, reference_gene: mouse)."""
    table = builtin_map("human", "mouse").pairs
    table = table[~table["query_gene"].str.startswith("ENSG")]
    table = table[
        ~table["query_gene"].duplicated(keep=False) & ~table["reference_gene"].duplicated(keep=False)
    ]
    names = dict(zip(table["query_gene"], table["reference_gene"], strict=True))
    keep = adata.var_names.isin(list(names))
    mouse = adata[:, keep].copy()
    mouse.var_names = [names[gene] for gene in mouse.var_names]
    return mouse, table


@pytest.fixture(scope="module")
def mouse_query(split):
    """The query of `split` (human) on the genes with one-to-one mouse orthologues, its simulated mouse
    twin, and the table of their names."""
    mouse, table = to_mouse(split[1])
    return split[1][:, split[1].var_names.isin(table["query_gene"])].copy(), mouse, table


def test_the_reference_species_is_recorded_and_told_for_old_bundles(bundle):
    assert bundle.preprocess["species"] == "human"
    old = {key: value for key, value in bundle.preprocess.items() if key != "species"}
    assert reference_species(old) == "human"


def test_a_mouse_query_against_a_human_model_given_neither_option_gets_the_hint(bundle, mouse_query):
    from scquery.query import query

    _, mouse, _ = mouse_query
    with pytest.raises(ScqueryError, match=r"look mouse.*--species mouse.*--gene-map") as error:
        query(mouse.copy(), bundle)
    assert str(error.value).count(". ") == 0  # one sentence


def test_a_mouse_query_through_the_orthologues_answers_like_the_human_one(bundle, mouse_query, tmp_path):
    from scquery.embed import embed
    from scquery.query import query

    human, mouse, table = mouse_query
    same = human.copy()
    query(same, bundle)
    crossed = mouse.copy()
    query(crossed, bundle, species="mouse")
    # the same cells on the same genes under other names: the same answer
    np.testing.assert_allclose(crossed.obsm["X_scquery"], same.obsm["X_scquery"], atol=1e-5)
    agree = (same.obs["scquery_prediction"] == crossed.obs["scquery_prediction"]).mean()
    assert agree >= 0.98, agree
    record = crossed.uns["scquery"]
    assert record["species"] == {"query": "mouse", "reference": "human"}
    assert record["params"]["species"] == "mouse"
    mapping = record["gene_map"]
    assert mapping["name"].startswith("built-in mouse → human") and mapping["collapse"] == "mean"
    assert mapping["one_to_one"] == record["overlap"]["n_shared"] > 0
    assert mapping["one_to_many"] == mapping["many_to_one"] == 0  # only 1:1 genes were kept
    assert mapping["overlap_before"]["n_shared"] < record["overlap"]["n_shared"]
    assert record["overlap"]["n_shared"] == same.uns["scquery"]["overlap"]["n_shared"]
    assert {"X_scquery", "scquery_unknown_reason"} <= {*crossed.obsm, *crossed.obs}

    path = tmp_path / "map.tsv"
    table.rename(columns={"query_gene": "human", "reference_gene": "mouse"})[["mouse", "human"]].to_csv(
        path, sep="\t", index=False
    )
    by_file = embed(mouse, bundle, gene_map=path, copy=True)
    np.testing.assert_allclose(by_file.obsm["X_scquery"], crossed.obsm["X_scquery"], atol=1e-5)
    assert by_file.uns["scquery"]["gene_map"]["name"] == "map.tsv"
    with pytest.raises(ScqueryError, match="not both"):
        embed(mouse, bundle, gene_map=path, species="mouse", copy=True)
    with pytest.raises(ScqueryError, match="None of the genes .* maps onto the model's genes through a dict"):
        embed(mouse, bundle, gene_map={"Nothing1": "CD3E"}, copy=True)


def test_cli_query_with_species_or_gene_map(bundle, mouse_query, tmp_path):
    from scquery.bundle import save_bundle
    from scquery.cli import main

    _, mouse, table = mouse_query
    model = save_bundle(bundle, tmp_path / "model")
    ad.AnnData(mouse[:60].X, obs=mouse[:60].obs, var=mouse.var).write_h5ad(tmp_path / "mouse.h5ad")
    table.set_axis(["human", "mouse"], axis=1)[["mouse", "human"]].to_csv(tmp_path / "map.csv", index=False)
    base = ["query", str(model), str(tmp_path / "mouse.h5ad"), "-q", "--k", "5"]
    assert main([*base, "--out", str(tmp_path / "none.h5ad")]) == 2
    assert not (tmp_path / "none.h5ad").exists()
    assert main([*base, "--species", "mouse", "--out", str(tmp_path / "s.h5ad")]) == 0
    assert main([*base, "--gene-map", str(tmp_path / "map.csv"), "--out", str(tmp_path / "m.h5ad")]) == 0
    by_species, by_map = ad.read_h5ad(tmp_path / "s.h5ad"), ad.read_h5ad(tmp_path / "m.h5ad")
    assert by_map.uns["scquery"]["gene_map"]["name"] == "map.csv"
    assert (by_species.obs["scquery_prediction"] == by_map.obs["scquery_prediction"]).all()


def test_unlabelled_cells_of_another_species_pretrain_through_the_orthologues(
    split, small_config, mouse_query
):
    from scquery.train import pretrain

    human, mouse, _ = mouse_query
    config = {**small_config, "genes": list(split[0].var_names), "pretrain_epochs": 1}
    crossed = pretrain(split[0], config=config, unlabeled=mouse, seed=0)
    same = pretrain(split[0], config=config, unlabeled=human, seed=0)
    assert crossed.history[0]["cells"] == split[0].n_obs + mouse.n_obs
    for (k1, b1), (k2, b2) in zip(crossed.weights, same.weights, strict=True):
        np.testing.assert_allclose(k1, k2, atol=1e-6)
        np.testing.assert_allclose(b1, b2, atol=1e-6)


def test_unlabelled_cells_sharing_few_genes_are_refused_by_their_own_option(split, small_config, mouse_query):
    """Unlabelled data holding under `unlabeled_min_overlap` of the model's genes are refused with a
    sentence naming that option (not the query's `min_overlap`), and as `TooFewGenes` carrying its
    name, so that a caller can tell this refusal from others; lowering it pretrains on them."""
    from scquery.train import pretrain

    _, mouse, _ = mouse_query
    genes = list(split[0].var_names)
    few = mouse[:, : len(genes) // 4].copy()
    config = {**small_config, "genes": genes, "pretrain_epochs": 1}
    with pytest.raises(
        TooFewGenes, match=r"below unlabeled_min_overlap=0\.5.*or lower unlabeled_min_overlap"
    ) as refused:
        pretrain(split[0], config=config, unlabeled=few, seed=0)
    assert refused.value.option == "unlabeled_min_overlap"
    lowered = pretrain(split[0], config={**config, "unlabeled_min_overlap": 0.1}, unlabeled=few, seed=0)
    assert lowered.history[0]["cells"] == split[0].n_obs + few.n_obs
