"""Reading every supported format from real files, merging, label checks and atomic writes."""

import gzip
import os
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from scquery.errors import ScqueryError
from scquery.io import (
    dataset_name,
    read,
    read_many,
)
from scquery.labels import check_labels
from scquery.outputs import write_h5ad
from scquery.values import select_values

N_CELLS, N_GENES = 30, 12


@pytest.fixture
def counts():
    """A small counts AnnData: integer values, named cells and genes, a label column."""
    rng = np.random.default_rng(0)
    X = rng.poisson(1.5, size=(N_CELLS, N_GENES)).astype(np.float32)
    X[0, :] = 0.0
    X[0, 0] = 3.0
    obs = pd.DataFrame(
        {"cell_type": ["T", "B", "NK"] * (N_CELLS // 3)},
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    var = pd.DataFrame(
        {"gene_ids": [f"ENSG{i:011d}" for i in range(N_GENES)]},
        index=[f"GENE{i}" for i in range(N_GENES)],
    )
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)


def _dense(adata):
    return adata.X.toarray()


def _files(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def write_10x_folder(adata, folder, *, v3):
    folder.mkdir()
    genes = pd.DataFrame({"id": adata.var["gene_ids"], "name": adata.var_names})
    if v3:
        genes["type"] = "Gene Expression"
    matrix = sp.coo_matrix(adata.X.T).astype(np.int64)
    barcodes = pd.DataFrame({"barcode": adata.obs_names})
    if not v3:
        scipy.io.mmwrite(folder / "matrix.mtx", matrix)
        genes.to_csv(folder / "genes.tsv", sep="\t", header=False, index=False)
        barcodes.to_csv(folder / "barcodes.tsv", sep="\t", header=False, index=False)
        return folder
    scipy.io.mmwrite(folder / "matrix.mtx", matrix)
    with open(folder / "matrix.mtx", "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (folder / "matrix.mtx").unlink()
    genes.to_csv(folder / "features.tsv.gz", sep="\t", header=False, index=False)
    barcodes.to_csv(folder / "barcodes.tsv.gz", sep="\t", header=False, index=False)
    return folder


def write_10x_h5(adata, path):
    """A Cell Ranger v3 HDF5 file: a genes × cells CSC matrix under /matrix."""
    csc = sp.csc_matrix(adata.X.T)
    n = adata.n_vars
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = csc.data.astype(np.int32)
        m["indices"] = csc.indices.astype(np.int64)
        m["indptr"] = csc.indptr.astype(np.int64)
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        features = m.create_group("features")
        features["id"] = np.array(adata.var["gene_ids"], dtype="S")
        features["name"] = np.array(adata.var_names, dtype="S")
        features["feature_type"] = np.array([b"Gene Expression"] * n)
        features["genome"] = np.array([b"GRCh38"] * n)
    return path


def _check_round_trip(result, source):
    assert sp.issparse(result.X) and result.X.format == "csr"
    assert result.X.dtype == np.float32
    assert list(result.obs_names) == list(source.obs_names)
    assert list(result.var_names) == list(source.var_names)
    np.testing.assert_array_equal(_dense(result), _dense(source))


def test_h5ad_round_trip(counts, tmp_path):
    counts.write_h5ad(tmp_path / "x.h5ad")
    result = read(tmp_path / "x.h5ad")
    _check_round_trip(result, counts)
    assert list(result.obs["cell_type"]) == list(counts.obs["cell_type"])
    assert result.uns["scquery"]["source"] == str(tmp_path / "x.h5ad")


@pytest.mark.parametrize("v3", [False, True], ids=["v2_genes_tsv", "v3_features_tsv_gz"])
def test_10x_folder_round_trip(counts, tmp_path, v3):
    result = read(write_10x_folder(counts, tmp_path / "filtered", v3=v3))
    _check_round_trip(result, counts)
    assert list(result.var["gene_ids"]) == list(counts.var["gene_ids"])


def test_10x_h5_round_trip(counts, tmp_path):
    result = read(write_10x_h5(counts, tmp_path / "filtered_feature_bc_matrix.h5"))
    _check_round_trip(result, counts)
    assert list(result.var["gene_ids"]) == list(counts.var["gene_ids"])


@pytest.mark.parametrize("name,sep", [("x.csv", ","), ("x.tsv", "\t"), ("x.csv.gz", ",")])
def test_text_round_trip(counts, tmp_path, name, sep):
    counts.to_df().to_csv(tmp_path / name, sep=sep)
    _check_round_trip(read(tmp_path / name), counts)


def test_text_genes_by_cells(counts, tmp_path):
    counts.to_df().T.to_csv(tmp_path / "x.tsv", sep="\t")
    _check_round_trip(read(tmp_path / "x.tsv", genes_by_cells=True), counts)


def test_loom_round_trip(counts, tmp_path):
    counts.write_loom(tmp_path / "x.loom")
    _check_round_trip(read(tmp_path / "x.loom"), counts)


def test_layer_and_raw(counts, tmp_path):
    logged = counts.copy()
    logged.layers["counts"] = counts.X.copy()
    logged.X = sp.csr_matrix(np.log1p(counts.X.toarray()))
    logged.raw = counts
    logged.write_h5ad(tmp_path / "x.h5ad")
    assert read(tmp_path / "x.h5ad").uns["scquery"]["source"] == str(tmp_path / "x.h5ad")
    for options in ({"layer": "counts", "use_raw": False}, {"layer": None, "use_raw": True}):
        result = read(tmp_path / "x.h5ad", **options)
        np.testing.assert_array_equal(_dense(result), _dense(logged))  # not moved into .X
        assert list(result.layers) == ["counts"] and result.raw is not None
        values = select_values(result, **options)
        assert values.X.format == "csr" and values.X.dtype == np.float32
        assert list(values.genes) == list(counts.var_names) and values.obs.index.equals(counts.obs_names)
        np.testing.assert_array_equal(values.X.toarray(), _dense(counts))
    with pytest.raises(ScqueryError, match="no layer 'spliced'.*layers: counts"):
        read(tmp_path / "x.h5ad", layer="spliced")
    counts.write_h5ad(tmp_path / "plain.h5ad")
    with pytest.raises(ScqueryError, match=r"plain.h5ad has no \.raw"):
        read(tmp_path / "plain.h5ad", use_raw=True)


def test_repeated_names_are_kept_and_genes_made_unique_for_use(counts, tmp_path):
    table = counts.to_df()
    table.columns = ["TP53", "TP53", *table.columns[2:]]
    table.index = ["c", "c", *table.index[2:]]
    table.to_csv(tmp_path / "dups.csv")
    result = read(tmp_path / "dups.csv")
    assert list(result.var_names[:2]) == ["TP53", "TP53"]
    assert list(result.obs_names[:2]) == ["c", "c"]
    values = select_values(result, layer=None, use_raw=False)
    assert list(values.genes[:2]) == ["TP53", "TP53-1"] and values.genes.is_unique
    assert list(values.obs.index) == list(result.obs_names)


def test_read_many_merges_on_the_union_of_genes(counts, tmp_path):
    first = counts[:10, :8].copy()
    second = counts[10:, 4:].copy()
    second.obs_names = first.obs_names.tolist() + [f"other{i}" for i in range(10)]
    first.write_h5ad(tmp_path / "pbmc.h5ad")
    second.to_df().to_csv(tmp_path / "pbmc.csv")
    merged = read_many([tmp_path / "pbmc.h5ad", tmp_path / "pbmc.csv"])
    assert merged.shape == (30, N_GENES)
    assert sp.issparse(merged.X) and merged.X.format == "csr" and merged.X.dtype == np.float32
    assert list(merged.obs["dataset"].value_counts().sort_index().items()) == [
        ("pbmc", 10),
        ("pbmc-1", 20),
    ]
    assert list(merged.obs_names) == list(first.obs_names) + list(second.obs_names)  # as given
    merged = merged[:, counts.var_names]
    expected = np.vstack([counts.X[:10].toarray(), counts.X[10:].toarray()])
    expected[:10, 8:] = 0
    expected[10:, :4] = 0
    np.testing.assert_array_equal(merged.X.toarray(), expected)


def test_dataset_name(tmp_path):
    assert dataset_name("x/pbmc.csv.gz") == "pbmc"
    assert dataset_name("x/donor.1.h5ad") == "donor.1"
    assert dataset_name(tmp_path) == tmp_path.name


# Bad input: one ScqueryError naming the file and what to do; nothing is written.


def _raises(path, match, **options):
    before = _files(path.parent)
    with pytest.raises(ScqueryError, match=match) as info:
        read(path, **options)
    assert str(path) in str(info.value)
    assert _files(path.parent) == before


def test_missing_file(tmp_path):
    _raises(tmp_path / "absent.h5ad", "does not exist; check the path")


def test_empty_file(tmp_path):
    (tmp_path / "empty.h5ad").write_bytes(b"")
    _raises(tmp_path / "empty.h5ad", "is empty")


def test_unknown_format(tmp_path):
    (tmp_path / "cells.xlsx").write_bytes(b"not a table")
    _raises(tmp_path / "cells.xlsx", r"unknown format \(\.xlsx\); give one of \.h5ad")


def test_corrupt_file(tmp_path):
    (tmp_path / "broken.h5ad").write_bytes(b"this is not HDF5")
    _raises(tmp_path / "broken.h5ad", "could not be read")


def test_no_cells(tmp_path):
    (tmp_path / "header.csv").write_text("cell,GENE0,GENE1\n")
    _raises(tmp_path / "header.csv", "holds 0 cells and 2 genes")


def test_no_genes(tmp_path):
    (tmp_path / "names.csv").write_text("cell\ncell0\ncell1\n")
    _raises(tmp_path / "names.csv", "holds 2 cells and 0 genes")


def test_non_numeric_table(tmp_path):
    (tmp_path / "words.csv").write_text("cell,GENE0\ncell0,high\n")
    _raises(tmp_path / "words.csv", "non-numeric values")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(counts, tmp_path, bad):
    X = counts.X.toarray()
    X[3, 4] = bad
    counts.X = sp.csr_matrix(X)
    counts.write_h5ad(tmp_path / "bad.h5ad")
    _raises(tmp_path / "bad.h5ad", "NaN or infinite values")


def test_negative_counts(counts, tmp_path):
    counts.layers["counts"] = counts.X.copy()
    counts.layers["counts"][1, 1] = -2.0
    counts.write_h5ad(tmp_path / "neg.h5ad")
    _raises(tmp_path / "neg.h5ad", "counts of .* contain 1 negative values", layer="counts")


def test_10x_folder_missing_file(counts, tmp_path):
    folder = write_10x_folder(counts, tmp_path / "tenx", v3=True)
    (folder / "barcodes.tsv.gz").unlink()
    before = _files(folder)
    with pytest.raises(ScqueryError, match="tenx has no barcodes.tsv.gz; add it"):
        read(folder)
    assert _files(folder) == before
    (folder / "features.tsv.gz").unlink()
    with pytest.raises(ScqueryError, match="neither genes.tsv"):
        read(folder)


def test_check_labels(counts):
    check_labels(counts, "cell_type", "ref.h5ad")
    with pytest.raises(ScqueryError, match="'celltype' is not in ref.h5ad.*columns: cell_type"):
        check_labels(counts, "celltype", "ref.h5ad")
    counts.obs["one"] = "T"
    with pytest.raises(ScqueryError, match="'one' of ref.h5ad has only one class"):
        check_labels(counts, "one", source="ref.h5ad")
    counts.obs["gaps"] = counts.obs["cell_type"].where(np.arange(N_CELLS) % 10 > 0)
    with pytest.raises(ScqueryError, match="'gaps' of ref.h5ad has 3 cells without a label"):
        check_labels(counts, "gaps", "ref.h5ad")
    counts.obs["blanks"] = counts.obs["cell_type"].astype(str).where(np.arange(N_CELLS) % 10 > 0, " ")
    labelled = check_labels(counts, "blanks", "ref.h5ad", allow_missing=True)
    np.testing.assert_array_equal(labelled, np.arange(N_CELLS) % 10 > 0)
    counts.obs["none"] = np.nan
    with pytest.raises(ScqueryError, match="'none' of ref.h5ad labels none of its 30 cells"):
        check_labels(counts, "none", "ref.h5ad", allow_missing=True)


def test_write_h5ad_is_atomic(counts, tmp_path):
    target = tmp_path / "out" / "result.h5ad"
    write_h5ad(counts, target)
    _check_round_trip(read(target), counts)
    assert _files(target.parent) == ["result.h5ad"]
    broken = counts.copy()
    broken.uns["unwritable"] = object()
    with pytest.raises(Exception):  # noqa: B017 - anndata's own error for an unwritable value
        write_h5ad(broken, tmp_path / "out" / "other.h5ad")
    assert _files(target.parent) == ["result.h5ad"]


def test_written_files_follow_the_umask(tmp_path):
    from scquery.outputs import write_h5ad

    old = os.umask(0o022)
    try:
        write_h5ad(ad.AnnData(np.ones((2, 2), dtype=np.float32)), tmp_path / "out.h5ad")
    finally:
        os.umask(old)
    assert (tmp_path / "out.h5ad").stat().st_mode & 0o777 == 0o644


def test_an_older_h5ad_layout_is_read_quietly_with_one_debug_line(caplog):
    import logging
    import warnings

    import scanpy as sc

    own = Path(sc.datasets.__file__).parent / "10x_pbmc68k_reduced.h5ad"  # anndata moves .uns['neighbors']
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="scquery"):
        warnings.simplefilter("always")
        adata = read(own)
    assert [str(w.message) for w in caught] == []
    notes = [r.getMessage() for r in caplog.records if "older h5ad layout" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith(f"{own} is in an older h5ad layout, updated on reading")
    assert "connectivities" in adata.obsp and adata.n_obs == 700  # read the same
