"""The user's data is never lost or altered: safe outputs, whole bundles, verified bundles, and every
user error one sentence (exit status 2), through the command line and the Python API."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scquery.bundle import MANIFEST_FILE, load_bundle, save_bundle, write_manifest
from scquery.cli import main
from scquery.embed import compute_embedding, embed
from scquery.errors import ScqueryError
from scquery.extend import extend
from scquery.io import read, read_many
from scquery.options import InputOptions
from scquery.outputs import write_h5ad
from scquery.query import query
from scquery.train import train

REPO = Path(__file__).resolve().parents[1]


def digests(folder):
    """SHA-256 of every file under `folder` (hidden ones included), by relative path."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(capsys, *args):
    """`scquery ARGS` in this process: `(status, the error lines)`."""
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("scquery: error:")], err


def refused(capsys, *args, match):
    """Assert that `scquery ARGS` stops with exit 2 and one sentence matching `match`, no traceback."""
    status, errors, err = run_cli(capsys, *args)
    assert status == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].rstrip().endswith("."), errors[0]
    assert re.search(match, errors[0]), errors[0]
    return errors[0]


def dead_pid():
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def foreign(split, small_config):
    """Another small model on the same genes (different seed and schedule): a different model_id."""
    config = {**small_config, "pretrain": False, "epochs": 2}
    return train(split[0], label_key="bulk_labels", config=config, seed=7)


@pytest.fixture
def model(bundle, tmp_path):
    return save_bundle(bundle, tmp_path / "model")


@pytest.fixture
def user_data(split):
    """A user's AnnData as a field-tested file looks: dense float64 scaled values in .X, the
    log-normalized values in a layer and in .raw, a `dataset` column of their own, repeated cell
    names, an obsm, and var columns."""
    query_cells = split[1][:60]
    logged = query_cells.X.toarray().astype(np.float64)
    scaled = (logged - logged.mean(axis=0)) / (logged.std(axis=0) + 1)
    adata = ad.AnnData(
        scaled,
        obs=query_cells.obs[["bulk_labels", "louvain"]].copy(),
        var=pd.DataFrame({"symbol": query_cells.var_names.str.lower()}, index=query_cells.var_names),
    )
    adata.layers["lognorm"] = sp.csr_matrix(logged)
    adata.raw = ad.AnnData(sp.csr_matrix(logged), obs=adata.obs[[]], var=adata.var.copy())
    adata.obs["dataset"] = "donor_7"
    adata.obsm["X_mine"] = np.arange(adata.n_obs * 3, dtype=np.float64).reshape(-1, 3)
    adata.uns["note"] = "mine"
    names = adata.obs_names.to_numpy().copy()
    names[1] = names[0]  # repeated cell names, as merged 10x runs have
    adata.obs_names = names
    return adata


def assert_same_data(result, given, added_obs=(), added_obsm=(), added_uns=()):
    """`result` is `given` exactly (values, dtype, raw, layers, names, columns) plus the named keys."""
    assert result.X.dtype == given.X.dtype and type(result.X) is type(given.X)
    np.testing.assert_array_equal(np.asarray(result.X), np.asarray(given.X))
    assert list(result.obs_names) == list(given.obs_names)
    assert list(result.var_names) == list(given.var_names)
    pd.testing.assert_frame_equal(result.obs[list(given.obs.columns)], given.obs)
    assert set(result.obs.columns) - set(given.obs.columns) == set(added_obs)
    pd.testing.assert_frame_equal(result.var, given.var)
    assert result.layers.keys() == given.layers.keys()
    for key in given.layers:
        assert (result.layers[key] != given.layers[key]).nnz == 0
    assert (result.raw.X != given.raw.X).nnz == 0
    assert list(result.raw.var_names) == list(given.raw.var_names)
    assert set(result.obsm) - set(given.obsm) == set(added_obsm)
    for key in given.obsm:
        np.testing.assert_array_equal(result.obsm[key], given.obsm[key])
    assert set(result.uns) - set(given.uns) == set(added_uns)


# The output is the input, plus documented keys.


def test_query_output_is_the_users_data_plus_documented_keys(model, user_data, tmp_path, capsys):
    given = tmp_path / "given.h5ad"
    user_data.write_h5ad(given)
    before = hashlib.sha256(given.read_bytes()).hexdigest()
    out = tmp_path / "annotated.h5ad"
    status, _, err = run_cli(capsys, "query", model, given, "--layer", "lognorm", "--out", out, "--k", 5)
    assert status == 0, err
    assert hashlib.sha256(given.read_bytes()).hexdigest() == before
    result, user_file = ad.read_h5ad(out), ad.read_h5ad(given)
    predictions = {c for c in result.obs.columns if c.startswith("scquery_")}
    assert "scquery_dataset" in predictions  # the user's obs['dataset'] is kept; the file name beside it
    assert set(result.obs["dataset"]) == {"donor_7"} and set(result.obs["scquery_dataset"]) == {"given"}
    assert_same_data(result, user_file, predictions, {"X_scquery"}, {"scquery", "scquery_prediction_colors"})
    assert result.uns["scquery"]["params"]["layer"] == "lognorm"

    # The values came from the layer: as if .X held them.
    plain = ad.AnnData(user_data.layers["lognorm"].astype(np.float32), var=user_data.var.copy())
    expected, _, _, _ = compute_embedding(plain, load_bundle(model))
    np.testing.assert_allclose(result.obsm["X_scquery"], expected, atol=1e-5)
    from_raw, _, _, _ = compute_embedding(user_data, load_bundle(model), InputOptions(use_raw=True))
    np.testing.assert_allclose(from_raw, expected, atol=1e-5)


def test_api_embed_and_query_keep_the_data(bundle, user_data):
    given = user_data.copy()
    embed(user_data, bundle, use_raw=True)
    assert_same_data(user_data, given, (), {"X_scquery"}, {"scquery"})
    matches = query(user_data, bundle, layer="lognorm", k=5)
    added = {c for c in user_data.obs.columns if c.startswith("scquery_")}
    assert_same_data(user_data, given, added, {"X_scquery"}, {"scquery", "scquery_prediction_colors"})
    assert list(matches["query_cell"][:10]) == [user_data.obs_names[0]] * 10  # repeated names, kept


def test_read_changes_nothing_of_an_h5ad(user_data, tmp_path):
    user_data.write_h5ad(tmp_path / "given.h5ad")
    result = read(tmp_path / "given.h5ad", layer="lognorm")
    assert_same_data(result, ad.read_h5ad(tmp_path / "given.h5ad"), (), (), {"scquery"})
    assert result.uns["scquery"]["source"] == str(tmp_path / "given.h5ad")


def test_merge_leaves_out_partial_obsm_instead_of_zeros(split, tmp_path):
    first, second = split[1][:30].copy(), split[1][30:70].copy()
    for part in (first, second):
        part.obsm["X_shared"] = np.ones((part.n_obs, 2))
    first.obsm["X_first_only"] = np.full((first.n_obs, 4), 5.0)
    first.write_h5ad(tmp_path / "a.h5ad")
    second.write_h5ad(tmp_path / "b.h5ad")
    with pytest.warns(UserWarning, match="'X_first_only' is not in every file"):
        merged = read_many([tmp_path / "a.h5ad", tmp_path / "b.h5ad"])
    assert set(merged.obsm) == {"X_shared", "X_pca", "X_umap"} and merged.n_obs == 70
    assert set(merged.obs["scquery_dataset"]) == {"a", "b"}  # the files had obs['dataset'] of their own
    assert set(merged.obs["dataset"]) == {"pbmc68k_heldout"}
    np.testing.assert_array_equal(merged.obsm["X_shared"], np.ones((70, 2)))


# Outputs never land on inputs, on each other, or in a bundle.


def test_outputs_that_are_inputs_or_each_other_are_refused(model, split, tmp_path, capsys):
    given = tmp_path / "cells.h5ad"
    split[1][:20].copy().write_h5ad(given)
    (tmp_path / "folder").mkdir()
    before, bundle_files = digests(tmp_path), digests(model)
    cases = [
        (["query", model, given, "--out", given], "is the input"),
        (["query", model, given, "--out", given, "--overwrite"], "is the input"),
        (["query", model, given, "--out", tmp_path / "o.h5ad", "--matches", given], "is the input"),
        (
            ["query", model, given, "--out", tmp_path / "o.h5ad", "--matches", tmp_path / "m.tsv"]
            + ["--summary", tmp_path / "m.tsv"],
            "both",
        ),
        (
            ["embed", model, given, "--out", model / "reference.h5ad", "--overwrite"],
            "inside the model bundle",
        ),
        (["embed", model, given, "--out", model / "notes.h5ad"], "inside the model bundle"),
        (["query", model, given, "--out", tmp_path / "folder"], "is a folder"),
        (["embed", model, given, "--out", tmp_path / "cells.h5ad.d" / ".." / "cells.h5ad"], "is the input"),
    ]
    for args, match in cases:
        refused(capsys, *args, match=match)
        assert digests(tmp_path) == before
    write = tmp_path / "written.h5ad"
    assert run_cli(capsys, "embed", model, given, "--out", write)[0] == 0
    refused(capsys, "embed", model, given, "--out", write, match="exists; give --overwrite")
    assert run_cli(capsys, "embed", model, given, "--out", write, "--overwrite")[0] == 0
    with pytest.raises(ScqueryError, match="inside the model bundle"):
        write_h5ad(split[1][:5].copy(), model / "reference.h5ad")
    assert digests(model) == bundle_files


def test_unwritable_output_is_one_sentence(model, split, tmp_path, capsys):
    given = tmp_path / "cells.h5ad"
    split[1][:20].copy().write_h5ad(given)
    if os.geteuid() == 0:  # root writes into read-only folders: take a place no one can write
        place = Path("/proc/scquery-test-output.h5ad")
    else:
        (tmp_path / "locked").mkdir()
        (tmp_path / "locked").chmod(0o555)
        place = tmp_path / "locked" / "out.h5ad"
    refused(capsys, "embed", model, given, "--out", place, match=r"(not writable|could not be written)")
    assert not place.exists()


def test_train_never_deletes_what_is_not_a_bundle(split, tmp_path, capsys, monkeypatch):
    project = tmp_path / "my_project"
    project.mkdir()
    split[0][:80].write_h5ad(project / "reference.h5ad")
    (project / "notes.txt").write_text("my notes")
    monkeypatch.chdir(project)
    common = ["--label-key", "bulk_labels"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("keep")
    before = digests(tmp_path)
    refused(capsys, "train", "reference.h5ad", *common, "--out", ".", "--overwrite", match="holds the input")
    refused(capsys, "train", "reference.h5ad", *common, "--out", project, match="holds the input")
    other = tmp_path / "other"
    refused(
        capsys, "train", "reference.h5ad", *common, "--out", other, "--overwrite", match="not a scquery model"
    )
    refused(capsys, "train", "reference.h5ad", *common, "--out", "notes.txt", match="not a folder")
    assert digests(tmp_path) == before
    with pytest.raises(ScqueryError, match="not a scquery model bundle"):
        save_bundle(None, tmp_path / "other", overwrite=True)
    assert digests(tmp_path) == before


def test_an_existing_bundle_is_replaced_only_with_overwrite(bundle, foreign, model, tmp_path, capsys):
    old = digests(model)
    with pytest.raises(ScqueryError, match="already holds a model bundle; give overwrite=True"):
        save_bundle(foreign, model)
    assert digests(model) == old
    with pytest.raises(ScqueryError, match="inside the model bundle"):
        save_bundle(foreign, model / "nested")
    (model / "my_notes.txt").write_text("mine")
    with pytest.raises(ScqueryError, match=r"also holds files scquery did not write \(my_notes.txt\)"):
        save_bundle(foreign, model, overwrite=True)
    (model / "my_notes.txt").unlink()
    save_bundle(foreign, model, overwrite=True)
    assert load_bundle(model).model_id == foreign.model_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it


def test_extend_replaces_its_model_only_when_asked(without_unknown_cells, model, tmp_path, capsys):
    cells = tmp_path / "more.h5ad"
    without_unknown_cells.write_h5ad(cells)
    old, n_reference = digests(model), load_bundle(model).reference.n_obs
    args = ["extend", model, cells, "--label-key", "bulk_labels"]
    refused(capsys, *args, match="give --out NEW_FOLDER, or --overwrite")
    refused(capsys, *args, "--out", model, match="already holds a model bundle; give --overwrite to replace")
    assert digests(model) == old
    assert run_cli(capsys, *args, "--overwrite", "-q")[0] == 0
    assert load_bundle(model).reference.n_obs == n_reference + 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "more.h5ad"]


@pytest.fixture
def without_unknown_cells(split):
    """Annotated cells the bundle's reference does not hold (renamed query cells)."""
    cells = split[1][:30].copy()
    cells.obs_names = [f"new_{name}" for name in cells.obs_names]
    return cells


# Every user error is one sentence and exit 2; nothing is written.


def test_bad_options_are_one_sentence(model, split, tmp_path, capsys):
    given = tmp_path / "cells.h5ad"
    split[1][:20].copy().write_h5ad(given)
    out = tmp_path / "out.h5ad"
    n_reference = load_bundle(model).reference.n_obs
    refused(
        capsys,
        "query",
        model,
        given,
        "--out",
        out,
        "--k",
        n_reference + 1,
        match=f"--k {n_reference + 1} is more than",
    )
    refused(capsys, "query", model, given, "--out", out, "--k", 0, match="--k must be a whole number")
    refused(
        capsys,
        "query",
        model,
        given,
        "--out",
        out,
        "--min-overlap",
        "nan",
        match="--min-overlap must be a finite",
    )
    refused(capsys, "query", model, given, "--out", out, "--min-confidence", "inf", match="--min-confidence")
    refused(
        capsys, "query", model, given, "--out", out, "--novelty-threshold", "0", match="--novelty-threshold"
    )
    refused(capsys, "embed", model, given, "--out", out, "--layer", "counts", match="has no layer 'counts'")
    config = tmp_path / "nan.yaml"
    config.write_text("noise_level: .nan\n")
    refused(
        capsys,
        "train",
        given,
        "--label-key",
        "bulk_labels",
        "--out",
        tmp_path / "m",
        "--config",
        config,
        match="finite",
    )
    assert not out.exists() and not (tmp_path / "m").exists()
    bundle = load_bundle(model)
    for options in ({"k": n_reference + 1}, {"min_overlap": float("nan")}, {"k": 2.5}):
        with pytest.raises(ScqueryError):
            query(split[1][:5].copy(), bundle, **options)


def test_bad_data_is_one_sentence(model, split, tmp_path, capsys, small_config):
    cells = split[1][:40].copy()
    no_x = ad.AnnData(obs=cells.obs.copy(), var=cells.var.copy())
    no_x.layers["lognorm"] = cells.X.copy()
    no_x.write_h5ad(tmp_path / "no_x.h5ad")
    refused(
        capsys,
        "embed",
        model,
        tmp_path / "no_x.h5ad",
        "--out",
        tmp_path / "o.h5ad",
        match=r"no expression values in \.X.*layer 'lognorm'",
    )
    assert (
        run_cli(
            capsys, "embed", model, tmp_path / "no_x.h5ad", "--layer", "lognorm", "--out", tmp_path / "o.h5ad"
        )[0]
        == 0
    )

    negative = cells.copy()
    negative.X = sp.csr_matrix(np.rint(np.expm1(cells.X.toarray())))
    negative.X[3, 5] = -4
    negative.write_h5ad(tmp_path / "negative.h5ad")
    refused(
        capsys,
        "query",
        model,
        tmp_path / "negative.h5ad",
        "--out",
        tmp_path / "n.h5ad",
        match="counts cannot be negative",
    )

    unknown = split[0][:120].copy()
    labels = unknown.obs["bulk_labels"].astype(str).to_numpy()
    labels[:10] = "Unknown"
    unknown.obs["bulk_labels"] = labels
    unknown.write_h5ad(tmp_path / "unknown.h5ad")
    message = refused(
        capsys,
        "train",
        tmp_path / "unknown.h5ad",
        "--label-key",
        "bulk_labels",
        "--out",
        tmp_path / "m",
        match="calls 10 cells 'Unknown'",
    )
    assert "rename" in message
    with pytest.raises(ScqueryError, match="'Unknown'"):
        train(unknown, label_key="bulk_labels", config=small_config)
    with pytest.raises(ScqueryError, match="'Unknown'"):
        extend(load_bundle(model), unknown[:10].copy(), label_key="bulk_labels")
    assert not (tmp_path / "m").exists() and not (tmp_path / "n.h5ad").exists()


def test_extending_with_cells_the_bundle_holds_is_refused(
    model, without_unknown_cells, split, tmp_path, capsys
):
    cells = tmp_path / "more.h5ad"
    without_unknown_cells.write_h5ad(cells)
    args = ["extend", model, cells, "--label-key", "bulk_labels"]
    assert run_cli(capsys, *args, "--out", tmp_path / "once", "-q")[0] == 0
    refused(
        capsys,
        "extend",
        tmp_path / "once",
        cells,
        "--label-key",
        "bulk_labels",
        "--out",
        tmp_path / "twice",
        match="30 cells of .* are already in the model's reference",
    )
    assert not (tmp_path / "twice").exists()
    with pytest.raises(ScqueryError, match="already in the model's reference"):
        extend(load_bundle(model), split[0][:10].copy(), label_key="bulk_labels")


# Bundles are verified: a changed file is named in one sentence.


def tamper_cases(foreign_model):
    def truncate(folder):
        data = (folder / "model.keras").read_bytes()
        (folder / "model.keras").write_bytes(data[: len(data) // 2])

    def foreign_weights(folder):
        shutil.copyfile(foreign_model / "model.keras", folder / "model.keras")

    def edit_meta(key, change):
        def edit(folder):
            meta = json.loads((folder / "bundle.json").read_text())
            change(meta)
            (folder / "bundle.json").write_text(json.dumps(meta, indent=1))

        return edit

    def reverse_genes(meta):
        meta["preprocess"]["genes"] = meta["preprocess"]["genes"][::-1]

    def swap_classes(meta):
        meta["classes"][0], meta["classes"][1] = meta["classes"][1], meta["classes"][0]

    def edit_reference(folder):
        reference = ad.read_h5ad(folder / "reference.h5ad")
        reference.obs["label"] = reference.obs["label"].to_numpy()[::-1]
        reference.write_h5ad(folder / "reference.h5ad")

    def zero_index(folder):  # the reference's nearest-neighbour distances, saved with the index
        np.save(folder / "index.npy", np.zeros_like(np.load(folder / "index.npy")))

    def drop_manifest(folder):
        (folder / MANIFEST_FILE).unlink()

    return {
        "truncated model": (truncate, r"model\.keras is truncated or damaged"),
        "foreign model": (foreign_weights, r"model\.keras is not the model this bundle was saved with"),
        "reversed genes": (
            edit_meta("genes", reverse_genes),
            r"bundle\.json was changed after the bundle was saved",
        ),
        "swapped classes": (edit_meta("classes", swap_classes), r"bundle\.json was changed"),
        "edited reference": (edit_reference, r"reference\.h5ad was changed after the bundle was saved"),
        "zeroed index": (zero_index, r"index\.npy differs from the one saved"),
        "no manifest": (drop_manifest, r"has no manifest\.sha256"),
    }


@pytest.fixture(scope="module")
def saved_pair(bundle, foreign, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    return save_bundle(bundle, folder / "original"), save_bundle(foreign, folder / "foreign")


@pytest.mark.parametrize("case", list(tamper_cases(Path("."))))
def test_tampered_bundles_are_refused(case, saved_pair, split, tmp_path, capsys):
    original, foreign_model = saved_pair
    tamper, match = tamper_cases(foreign_model)[case]
    folder = tmp_path / "model"
    shutil.copytree(original, folder)
    load_bundle(folder)  # whole: loads
    tamper(folder)
    with pytest.raises(ScqueryError, match=match):
        load_bundle(folder)
    given = tmp_path / "cells.h5ad"
    split[1][:10].copy().write_h5ad(given)
    refused(capsys, "query", folder, given, "--out", tmp_path / "o.h5ad", match=match)
    assert not (tmp_path / "o.h5ad").exists()


def test_files_from_another_bundle_are_refused_even_with_a_new_manifest(saved_pair, tmp_path):
    original, foreign_model = saved_pair
    folder = tmp_path / "model"
    shutil.copytree(original, folder)
    shutil.copyfile(foreign_model / "model.keras", folder / "model.keras")
    write_manifest(folder)  # someone "repairs" the manifest: the model still does not fit
    with pytest.raises(ScqueryError, match="does not match the model_id"):
        load_bundle(folder)
    with pytest.raises(ScqueryError, match="does not match the model_id"):
        load_bundle(folder, verify=False)


# Leftovers of killed runs are ours by name, and cleaned by the next run.


def test_leftovers_of_dead_runs_are_cleaned_and_live_ones_kept(bundle, foreign, model, tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale_dir = tmp_path / f".model.scquery-staging-{dead}-abc"
    stale_dir.mkdir()
    (stale_dir / "model.keras").write_bytes(b"half")
    stale_file = tmp_path / f".out.h5ad.scquery-tmp-{dead}-xyz"
    stale_file.write_bytes(b"half")
    live = tmp_path / f".model.scquery-staging-{alive}-def"
    live.mkdir()
    foreign_name = tmp_path / ".model.mine"
    foreign_name.mkdir()
    save_bundle(foreign, model, overwrite=True)
    write_h5ad(ad.AnnData(np.ones((2, 2), dtype=np.float32)), tmp_path / "out.h5ad")
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and foreign_name.exists()

    # A replacement killed between its two renames (file systems without an atomic swap): put back.
    moved = tmp_path / f".model.scquery-old-{dead}-ghi"
    os.rename(model, moved)
    assert load_bundle(model).model_id == foreign.model_id and not moved.exists()


def test_replacing_without_an_atomic_swap(bundle, foreign, model, tmp_path, monkeypatch):
    """Where the file system cannot swap two folders in one step (two renames instead)."""
    import scquery.outputs

    monkeypatch.setattr(scquery.outputs, "_exchange", lambda first, second: False)
    save_bundle(foreign, model, overwrite=True)
    assert load_bundle(model).model_id == foreign.model_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# A real SIGKILL of `scquery train --overwrite` at several moments.

TINY = {"min_genes": 0, "hidden_sizes": [16, 4], "pretrain_epochs": 1, "epochs": 2, "min_cells_per_class": 5}


def _staging(folder):
    return [p for p in folder.iterdir() if p.name.startswith(".model.scquery-staging-")]


def _model_id(folder):
    try:
        return json.loads((folder / "model" / "bundle.json").read_text())["model_id"]
    except (OSError, ValueError):
        return None


#: When to kill: `reached(folder, seconds since the start, model_id in place before the run)`.
MOMENTS = {
    "training": lambda folder, seconds, old: seconds > 1.0 and not _staging(folder),
    "staging created": lambda folder, seconds, old: bool(_staging(folder)),
    "model written": lambda folder, seconds, old: any((p / "model.keras").exists() for p in _staging(folder)),
    "reference written": lambda folder, seconds, old: any(
        (p / "reference.h5ad").exists() for p in _staging(folder)
    ),
    "manifest written": lambda folder, seconds, old: any(
        (p / MANIFEST_FILE).exists() for p in _staging(folder)
    ),
    "swapped, old not yet removed": lambda folder, seconds, old: (
        bool(_staging(folder)) and _model_id(folder) != old
    ),
}


@pytest.mark.slow
def test_sigkill_of_train_overwrite_leaves_a_whole_bundle(bundle, split, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    split[0].write_h5ad(data / "reference.h5ad")
    (data / "config.yaml").write_text(json.dumps(TINY))
    (data / "notes.txt").write_text("mine")
    user_files = digests(data)
    work = tmp_path / "work"
    work.mkdir()
    path = save_bundle(bundle, work / "model")
    models = {bundle.model_id}
    command = [
        sys.executable, "-m", "scquery.cli", "train", str(data / "reference.h5ad"),
        "--label-key", "bulk_labels", "--config", str(data / "config.yaml"), "--out", str(path),
        "--overwrite", "-q",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    killed, outcomes = [], {}
    for seed, (moment, reached) in enumerate(MOMENTS.items()):
        old = _model_id(work)
        process = subprocess.Popen([*command, "--seed", str(seed)], env=env, stderr=subprocess.PIPE)
        started = time.monotonic()
        while process.poll() is None and not reached(work, time.monotonic() - started, old):
            time.sleep(0.0005)
        process.send_signal(signal.SIGKILL)
        status = process.wait()
        if status == -signal.SIGKILL:
            killed.append(moment)
        else:
            assert status == 0, process.stderr.read().decode()
        assert digests(data) == user_files
        loaded = load_bundle(path)  # the old bundle or the new one, whole (and verified)
        outcomes[moment] = ("killed, " if status else "finished, ") + (
            "old bundle" if loaded.model_id in models else "new bundle"
        )
        models.add(loaded.model_id)
        cells = split[1][:20].copy()
        query(cells, loaded, k=5)
        assert cells.obs["scquery_prediction"].notna().all()
        assert not _staging(work), "leftovers of the killed run are cleaned when the bundle is loaded"
    assert len(killed) >= 4, outcomes  # the last moment lasts milliseconds: not always caught
    finished = subprocess.run([*command, "--seed", "99"], env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert sorted(p.name for p in work.iterdir()) == ["model"]
    assert digests(data) == user_files


#: The environment running the tests: `make run` uses it as its VENV (never reinstalled by a test).
VENV = Path(sys.prefix)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(
    not (VENV / "bin" / "snakemake").is_file() or VENV == Path(sys.base_prefix),
    reason="the tests do not run in a virtual environment holding snakemake (make's VENV)",
)
def test_make_run_resumes_after_a_kill(tmp_path):
    """`make run` killed with SIGKILL (whole process group) mid-training, then started again:
    it finishes without the user knowing Snakemake's --unlock or --rerun-incomplete."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["train"] = {"n_top_genes": 300, "hidden_sizes": [32, 8], "pretrain_epochs": 2, "epochs": 4}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    config_file = tmp_path / "config.yaml"
    arguments = "results/model "  # the target: up to the model bundle
    arguments += f"--snakefile {REPO / 'Snakefile'} --directory {work} --configfile {config_file}"
    # `-o VENV/.installed-run`: use the environment as it is (never reinstall it from a test)
    command = [
        "make",
        "-C",
        str(REPO),
        "-o",
        f"{VENV}/.installed-run",
        "run",
        f"VENV={VENV}",
        "CORES=1",
        f"SNAKEMAKE_ARGS={arguments}",
    ]
    first = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while first.poll() is None and not (work / "logs" / "finetune.log").exists():
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert list((work / ".snakemake" / "locks").iterdir()), "the killed run left its lock"
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("Using workflow specific profile") <= 1, again.stderr[:3000]  # not twice
    bundle = load_bundle(work / "results" / "model")
    assert bundle.reference.obsm["X_scquery"].shape[1] == 8


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(
    not (VENV / "bin" / "snakemake").is_file() or VENV == Path(sys.base_prefix),
    reason="the tests do not run in a virtual environment holding snakemake (make's VENV)",
)
def test_make_run_shows_what_is_wrong_with_the_configuration(tmp_path):
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "seed": -3}))
    arguments = (
        f"--snakefile {REPO / 'Snakefile'} --directory {tmp_path} --configfile {tmp_path / 'bad.yaml'}"
    )
    command = ["make", "-C", str(REPO), "-o", f"{VENV}/.installed-run", "run", f"VENV={VENV}"]
    result = subprocess.run(
        [*command, f"SNAKEMAKE_ARGS={arguments}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("make", "Using workflow"))]
    assert lines == [
        "scquery: error: The configuration is invalid at seed: -3 is less than the minimum of 0; "
        "config/README.md describes the valid keys and values."
    ], result.stderr
