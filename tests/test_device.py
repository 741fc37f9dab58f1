"""The paths training takes on an accelerator, run on the CPU (the tests never have a GPU): the
training matrix held on the device and densified there, mixed precision, and both on JAX and over
two virtual devices (in a child process, as XLA's device count is fixed when JAX starts)."""

import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import anndata as ad
import keras
import numpy as np
import pytest
import scipy.sparse as sp

from scquery import batches as batches_module
from scquery.batches import RowBatches, SparseBatches, device_rows
from scquery.classifier import build_classifier, fit_classifier
from scquery.config import TrainConfig
from scquery.placement import data_parallel, device_budget, device_kind
from scquery.pretrain import pretrain_greedy


@pytest.fixture
def X():
    X = sp.random(203, 31, density=0.2, format="csr", dtype=np.float32, random_state=0).tolil()
    X[7, :] = 0  # an empty row
    X[11, :] = np.arange(1, 32)  # a full one: the longest row sets the slots read per row
    return X.tocsr()


def dense(rows, indices):
    return keras.ops.convert_to_numpy(rows(np.asarray(indices, dtype=np.int32)))


def test_rows_held_on_the_device_densify_as_the_matrix(X):
    rows = device_rows(X, force=True)
    assert rows.width == 31 and rows.trainable_weights == [] and len(rows.weights) == 3
    indices = [11, 0, 7, 202, 11, 5]  # any order, repeats
    np.testing.assert_array_equal(dense(rows, indices), X[indices].toarray())
    empty = device_rows(sp.csr_matrix((4, 6), dtype=np.float32), force=True)
    np.testing.assert_array_equal(dense(empty, [3, 0]), np.zeros((2, 6), np.float32))


def test_a_matrix_on_disk_is_copied_block_by_block_into_parts(X, tmp_path, monkeypatch):
    ad.AnnData(X).write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    monkeypatch.setattr(batches_module, "DEVICE_BLOCK_ROWS", 16)
    monkeypatch.setattr(batches_module, "PART_VALUES", X.nnz // 3)  # as 2**31 values would be
    rows = device_rows(backed.X, force=True)
    assert len(rows.counts) == 4 and sum(rows.counts) == 203 and rows.firsts[0] == 0
    np.testing.assert_array_equal(dense(rows, np.arange(203)[::-1]), X.toarray()[::-1])
    backed.file.close()


def test_rows_go_to_the_device_where_it_has_room_for_them(X, monkeypatch):
    # the tests' machine has no accelerator: batches are densified on the host (SparseBatches)
    assert device_kind() == "cpu" and device_budget() is None
    assert device_rows(X) is None
    # an accelerator's budget: 8 bytes per value and 4 per row must fit
    needed = 8 * X.nnz + 4 * X.shape[0]
    monkeypatch.setattr(batches_module, "device_budget", lambda: needed)
    assert device_rows(X) is not None
    monkeypatch.setattr(batches_module, "device_budget", lambda: needed - 1)
    assert device_rows(X) is None


def test_row_batches_are_the_sparse_batches_as_row_indices(X):
    y, cells = np.arange(150) % 4, np.arange(10, 160)
    host = SparseBatches(X, y, cells=cells, batch_size=32, seed=5)
    device = RowBatches(X, y, cells=cells, batch_size=32, seed=5)
    for index in range(len(host)):
        (x, labels), (rows, same) = host[index], device[index]
        assert rows.dtype == np.int32
        np.testing.assert_array_equal(x, X[rows].toarray())
        np.testing.assert_array_equal(labels, same)


def _train(X, y, *, rows, **options):
    """Pretrain and fine-tune a small network on `X` (the same seeds, training `options` on top)."""
    config = TrainConfig(
        hidden_sizes=[12, 6], pretrain_epochs=2, epochs=6, batch_size=32, patience=2, **options
    )
    weights, history, _ = pretrain_greedy(X, config, seed=1, rows=rows, verbose=0)
    model = build_classifier(X.shape[1], 3, config, encoder_weights=weights, seed=2)
    fitted = fit_classifier(model, X, y, config, seed=3, rows=rows, verbose=0)
    return model, history, fitted


def test_rows_on_the_device_train_the_model_the_host_batches_train(X):
    y = np.arange(X.shape[0]) % 3
    host = _train(X, y, rows=None)
    device = _train(X, y, rows=device_rows(X, force=True))
    for a, b in zip(host[0].get_weights(), device[0].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert host[1][0]["loss"] == pytest.approx(device[1][0]["loss"], rel=1e-5)
    assert host[2]["val_loss"] == pytest.approx(device[2]["val_loss"], rel=1e-5)


def test_mixed_precision_trains_in_bfloat16_and_keeps_a_float32_model(X):
    y = np.arange(X.shape[0]) % 3
    full = _train(X, y, rows=None)
    mixed = _train(X, y, rows=None, mixed_precision=True)
    assert {layer.dtype_policy.name for layer in mixed[0].layers} == {"float32"}
    assert all(w.dtype == np.float32 for w in mixed[0].get_weights())
    # bfloat16's 8-bit mantissa: another loss, by little
    assert mixed[1][0]["loss"] != full[1][0]["loss"]
    assert mixed[1][0]["loss"] == pytest.approx(full[1][0]["loss"], rel=0.02)
    assert mixed[2]["loss"] == pytest.approx(full[2]["loss"], rel=0.02)


def test_one_device_changes_nothing_and_several_need_jax():
    with data_parallel(1):
        assert keras.distribution.distribution() is None
    if keras.backend.backend() != "jax":
        from scquery.errors import ScqueryError

        with pytest.raises(ScqueryError, match="needs Keras's JAX backend"):
            data_parallel(2)


#: On JAX with two virtual CPU devices: the rows held on the device, mixed precision, both over
#: the two devices, against the host's batches on one device.
_JAX_SCRIPT = textwrap.dedent(
    """
    import json
    import keras, numpy as np, scipy.sparse as sp
    from scquery.batches import device_rows
    from scquery.classifier import build_classifier, fit_classifier
    from scquery.config import TrainConfig
    from scquery.errors import ScqueryError
    from scquery.placement import data_parallel
    from scquery.pretrain import pretrain_greedy

    X = sp.random(256, 40, density=0.2, format="csr", dtype=np.float32, random_state=0)
    y = np.arange(256) % 3

    def train(*, rows, **options):
        config = TrainConfig(hidden_sizes=[12, 6], pretrain_epochs=2, epochs=4, batch_size=32,
                             validation_fraction=0.25, **options)
        weights, _, _ = pretrain_greedy(X, config, seed=1, rows=rows, verbose=0)
        model = build_classifier(40, 3, config, encoder_weights=weights, seed=2)
        fit_classifier(model, X, y, config, seed=3, rows=rows, verbose=0)
        return model.get_weights()

    def difference(a, b):
        return max(float(np.abs(x - z).max()) for x, z in zip(a, b, strict=True))

    host = train(rows=None)
    result = {"device": difference(host, train(rows=device_rows(X, force=True)))}
    with data_parallel(2):
        result["devices"] = len(keras.distribution.distribution().device_mesh.devices)
        rows = device_rows(X, force=True)
        result["replicated"] = rows.weights[0].value.sharding.is_fully_replicated
        result["two"] = difference(host, train(rows=rows))
        result["two_mixed"] = difference(host, train(rows=rows, mixed_precision=True))
    try:
        data_parallel(3)
    except ScqueryError as error:
        result["three"] = str(error)
    print(json.dumps(result))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(find_spec("jax") is None, reason="JAX is not installed")
def test_on_jax_over_two_devices_the_device_rows_and_mixed_precision_train_the_model():
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["device"] < 1e-6  # the same batches, densified on the device
    assert result["devices"] == 2 and result["replicated"]  # a copy of the data on each device
    assert result["two"] < 1e-5  # the gradient summed over two devices: float rounding
    assert 1e-5 < result["two_mixed"] < 0.05  # bfloat16: near, not equal
    assert "3 devices was asked for, and the backend sees 2" in result["three"]


#: train() on the built-in data, alone or as one of the processes of a data-parallel run over every
#: device of every process (`data_parallel(0)`); the first process writes the model.
_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from scquery.batches import SparseBatches
    from scquery.datasets import pbmc68k_split
    from scquery.placement import data_parallel, process_index
    from scquery.train import train

    reference, _ = pbmc68k_split(seed=0)
    config = {"min_genes": 0, "hidden_sizes": [32, 8], "pretrain_epochs": 2, "epochs": 3,
              "min_cells_per_class": 5, "batch_size": 64, "validation_fraction": 0.2}
    with data_parallel(int(sys.argv[2])):
        bundle = train(reference, label_key="bulk_labels", config=config, seed=1, verbose=0)
        (first,) = SparseBatches(np.arange(128.0)[:, None], batch_size=64, shuffle=False, seed=0)[0]
    if process_index() == 0:
        np.savez(sys.argv[1], *bundle.model.get_weights(), embedding=bundle.reference.obsm["X_scquery"])
    print(json.dumps({"process": process_index(), "first_batch": first[:, 0].tolist()}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(find_spec("jax") is None, reason="JAX is not installed")
def test_two_processes_train_the_model_one_process_trains(tmp_path):
    # two processes on this machine stand for two nodes (one CPU device each), joined as srun's
    # tasks would be, through the variables keras.distribution.initialize() reads
    import socket

    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, "-c", _PROCESS_SCRIPT]
    alone = subprocess.run([*command, tmp_path / "one.npz", "1"], env=env, capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr[-3000:]
    joined = {
        **env,
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
    }
    runs = [
        subprocess.Popen(
            [*command, tmp_path / "two.npz", "0"],
            env={**joined, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=900) for run in runs]
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr[-3000:]
    results = sorted(
        (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs), key=lambda r: r["process"]
    )
    # each process feeds its half of every batch: together, the batch of one process alone
    assert results[0]["first_batch"] == list(range(32)) and results[1]["first_batch"] == list(range(32, 64))
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    largest = max(float(np.abs(one[key]).max()) for key in one.files)
    assert max(float(np.abs(one[key] - two[key]).max()) for key in one.files) < 1e-3 * max(largest, 1.0)


def test_train_with_its_data_on_the_device_gives_the_bundle_the_host_gives(monkeypatch, split):
    from conftest import SMALL_CONFIG

    from scquery.train import train

    config = {**SMALL_CONFIG, "pretrain_epochs": 2, "epochs": 12, "propagate_min_probability": 0.2}
    reference = split[0].copy()
    labels = reference.obs["bulk_labels"].astype(object)
    labels.iloc[::5] = np.nan  # unlabelled cells: propagation predicts them, from the device's rows too
    reference.obs["bulk_labels"] = labels
    host = train(reference, label_key="bulk_labels", config=config, seed=3, verbose=0)
    assert host.history["cells"]["propagated"] > 0
    # the accelerator's path on this CPU: the processed reference's rows held as weights, once
    made = []

    def held(X):
        made.append(device_rows(X, force=True))
        return made[-1]

    monkeypatch.setattr(sys.modules["scquery.train"], "device_rows", held)
    device = train(reference, label_key="bulk_labels", config=config, seed=3, verbose=0)
    assert len(made) == 1 and made[0] is not None
    assert device.history["cells"] == host.history["cells"]
    for a, b in zip(host.model.get_weights(), device.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        host.reference.obsm["X_scquery"], device.reference.obsm["X_scquery"], atol=1e-5
    )


def test_the_command_line_trains_in_mixed_precision_and_refuses_devices_it_lacks(split, tmp_path, capsys):
    import yaml
    from conftest import SMALL_CONFIG

    from scquery.bundle import load_bundle
    from scquery.cli import main

    split[0].write_h5ad(tmp_path / "reference.h5ad")
    small = {**SMALL_CONFIG, "pretrain_epochs": 1, "epochs": 2}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(small))
    given = [
        "train",
        tmp_path / "reference.h5ad",
        "--label-key",
        "bulk_labels",
        "--config",
        tmp_path / "train.yaml",
    ]
    # this machine's one CPU device (TensorFlow: no data-parallel training at all)
    assert main([str(a) for a in [*given, "--devices", "2", "--out", tmp_path / "two"]]) == 2
    err = capsys.readouterr().err
    assert "error: Training on 2 devices" in err and "Traceback" not in err
    assert not (tmp_path / "two").exists()
    assert main([str(a) for a in [*given, "--mixed-precision", "--out", tmp_path / "mixed"]]) == 0
    bundle = load_bundle(tmp_path / "mixed")
    assert bundle.config["mixed_precision"] is True and bundle.config["devices"] == 1
    assert {str(w.dtype) for w in bundle.model.get_weights()} == {"float32"}
