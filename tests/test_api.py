"""`import scquery as scq`: the short API, the README's notebook example, a Bundle you can read, and
scanpy's neighbours on the embedding at a real size."""

import importlib
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import scquery as scq

README = Path(__file__).resolve().parents[1] / "README.md"


def test_one_import_has_the_whole_api():
    module = importlib.import_module  # scq.train is the function; its module is scquery.train
    assert scq.train is module("scquery.train").train and scq.embed is module("scquery.embed").embed
    assert scq.query is module("scquery.query").query and scq.load is module("scquery.bundle").load_bundle
    assert scq.read is module("scquery.io").read_many and scq.Bundle is module("scquery.bundle").Bundle
    for name in ("umap", "embedding", "confusion", "summary", "history", "palette"):
        assert callable(getattr(scq.pl, name))
    assert set(scq.__all__) <= set(dir(scq))


def test_bundle_repr_is_a_few_lines(bundle):
    text = repr(bundle)
    lines = text.splitlines()
    assert 3 <= len(lines) <= 6 and len(text) < 600
    assert lines[0] == f"scquery Bundle {bundle.model_id}: 765 → 64 → 16 → {len(bundle.classes)} cell types"
    assert "validation accuracy" in text and "reference: 490 cells" in text
    assert str(bundle) == text


def test_bundle_save_and_load(bundle, tmp_path):
    path = bundle.save(tmp_path / "model")
    loaded = scq.load(path)
    assert repr(loaded) == repr(bundle)
    with pytest.raises(scq.ScqueryError):
        bundle.save(tmp_path / "model")  # an existing bundle is replaced only with overwrite=True
    bundle.save(tmp_path / "model", overwrite=True)


def test_read_takes_one_path_or_several(split, tmp_path):
    split[1].write_h5ad(tmp_path / "query.h5ad")
    one = scq.read(tmp_path / "query.h5ad")
    assert one.n_obs == split[1].n_obs
    assert scq.read([str(tmp_path / "query.h5ad")]).n_obs == one.n_obs


@pytest.mark.slow
def test_scanpy_neighbors_on_the_embedding_of_ten_thousand_cells(bundle, split):
    """pynndescent >= 0.7 with scanpy < 1.12 fails here ('csr_array' has no attribute 'getnnz')."""
    rng = np.random.default_rng(0)
    cells = rng.choice(split[1].n_obs, 10_000)
    adata = split[1][cells].copy()
    adata.obs_names_make_unique()
    adata.X = sp.csr_matrix(adata.X.multiply(rng.uniform(0.9, 1.1, size=adata.X.shape)), dtype=np.float32)
    scq.embed(adata, bundle)
    sc.pp.neighbors(adata, use_rep="X_scquery", random_state=0)
    assert adata.obsp["connectivities"].shape == (10_000, 10_000)
    assert adata.uns["neighbors"]["params"]["use_rep"] == "X_scquery"


def readme_python_example():
    text = README.read_text()
    section = text[text.index("## Python") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_example_uses_only_the_short_api():
    code = readme_python_example()
    assert "import scquery as scq" in code
    assert not re.search(r"from scquery|scquery\.\w", code)


@pytest.mark.slow
def test_readme_example_runs_on_pbmc68k_reduced(tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_python_example(), "README.md", "exec"), namespace)
    query = namespace["query"]
    assert isinstance(query, ad.AnnData) and query.n_obs == 350
    assert {"scquery_prediction", "scquery_confidence"} <= set(query.obs.columns)
    assert query.obsm["X_umap"].shape == (350, 2)
    assert (tmp_path / "model").is_dir()
    out = capsys.readouterr().out
    assert out.startswith("scquery Bundle ") and "\n350 cells · accuracy " in out  # scores, rounded
    assert scq.score(query, "bulk_labels")["accuracy"] > 0.6


def test_query_embed_and_extend_take_a_bundle_or_its_path(bundle, split, tmp_path):
    path = bundle.save(tmp_path / "model")
    given, loaded = split[1][:40].copy(), split[1][:40].copy()
    scq.query(given, str(path), k=5)
    scq.query(loaded, scq.load(path), k=5)
    assert given.obs["scquery_prediction"].equals(loaded.obs["scquery_prediction"])
    embedded = scq.embed(split[1][:10].copy(), path, copy=True)
    np.testing.assert_allclose(
        embedded.obsm["X_scquery"], loaded.obsm["X_scquery"][:10], rtol=1e-5, atol=1e-6
    )
    more = split[1][40:60].copy()
    assert scq.extend(path, more, label_key="bulk_labels").reference.n_obs == bundle.reference.n_obs + 20
    with pytest.raises(scq.ScqueryError, match=r"^The model must be a scquery Bundle .* got int\.$"):
        scq.query(split[1][:5].copy(), 42)
    with pytest.raises(scq.ScqueryError, match=r"other way round; call scq\.query\(adata, bundle\)\.$"):
        scq.query(bundle, split[1][:5].copy())
    with pytest.raises(scq.ScqueryError, match=r"call scq\.extend\(bundle, adata, label_key=\.\.\.\)"):
        scq.extend(more, bundle, label_key="bulk_labels")
    with pytest.raises(scq.ScqueryError, match="is a data file, not a model bundle; did you swap them?"):
        split[1][:5].write_h5ad(tmp_path / "cells.h5ad")
        scq.query(split[1][:5].copy(), tmp_path / "cells.h5ad")
