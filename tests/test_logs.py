"""What scquery prints: stages on the `scquery` logger, no backend chatter, progress bars, CLI levels."""

import logging
import os
import re
import subprocess
import sys

import pytest
import yaml

from scquery.classifier import build_classifier, fit_classifier
from scquery.config import TrainConfig
from scquery.logs import _held_back_stderr, logger, resolve_verbose
from scquery.train import train

#: Lines TensorFlow, XLA, absl or CUDA write on their own (C++ log prefixes like `I0000 00:00:…`).
BACKEND_LINE = re.compile(r"tensorflow|absl|cuda|cuInit|oneDNN|XLA|^[IWEF]\d{4} ", re.IGNORECASE)


@pytest.fixture(scope="module")
def cli_inputs(split, small_config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    split[0].write_h5ad(folder / "reference.h5ad")
    (folder / "train.yaml").write_text(yaml.safe_dump({**small_config, "pretrain_epochs": 2, "epochs": 3}))
    return folder


def run_train(folder, *options):
    command = [
        sys.executable, "-m", "scquery.cli", "train", str(folder / "reference.h5ad"),
        "--label-key", "bulk_labels", "--config", str(folder / "train.yaml"), "--overwrite",
        "--out", str(folder / "model"), *options,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_cli_prints_stages_and_no_backend_lines(cli_inputs):
    result = run_train(cli_inputs)
    lines = result.stderr.splitlines()
    assert [line for line in lines if BACKEND_LINE.search(line)] == []
    assert all(line.startswith("scquery: ") for line in lines), result.stderr
    assert result.stdout == ""
    text = result.stderr
    assert "scquery: preprocessing the reference: 490 cells × 765 genes" in text
    assert "scquery: pretraining layer 1/2: 765 → 64, 2 epochs" in text
    assert "scquery: pretraining layer 2/2: 64 → 16, 2 epochs" in text
    assert "scquery: fine-tuning the classifier: 765 → 64 → 16 → 10 cell types, 490 cells, up to 3" in text
    # not a terminal: one line per epoch, each labelled with its stage
    assert len(re.findall(r"pretraining layer 2/2 · epoch \d/2 · loss \d", text)) == 2
    epoch = r"fine-tuning the classifier · epoch 1/3 · loss [\d.]+ · accuracy [\d.]+ · val_loss [\d.]+"
    assert re.search(epoch, text)


@pytest.mark.slow
def test_cli_quiet_prints_nothing_and_verbose_shows_the_backend(cli_inputs):
    assert run_train(cli_inputs, "-q").stderr == ""
    verbose = run_train(cli_inputs, "-vv").stderr
    assert "pretraining layer 1/2 · epoch 1/2" in verbose
    if "backend: " not in verbose:  # what the backend says at start-up depends on the machine
        pytest.skip("the backend printed nothing at start-up here")
    assert all(line.startswith("scquery: ") for line in verbose.splitlines())


def test_held_back_stderr_is_captured_or_replayed(capfd):
    with _held_back_stderr() as held:
        os.write(2, b"I0000 backend start-up chatter\n")
    assert held.text == "I0000 backend start-up chatter\n"
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError), _held_back_stderr() as held:
        os.write(2, b"why the import failed\n")
        held.replay = True
        raise RuntimeError
    assert capfd.readouterr().err == "why the import failed\n"


def test_import_prints_nothing():
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    script = "import scquery, keras, tensorflow as tf; print(float(tf.constant(1.0) + 1))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("2.0\n", "")


def test_an_info_log_shows_scquerys_lines_not_faiss_or_anndata_chatter():
    script = """
import logging
logging.basicConfig(level="INFO")
import numpy as np, anndata as ad, pandas as pd
import scquery
from scquery.neighbors import NeighborIndex
points = np.random.default_rng(0).normal(size=(50, 4)).astype("float32")
NeighborIndex(points, seed=0).kneighbors(points, 3)
obs = pd.DataFrame({"t": ["a", "b", "a"]}, index=["x", "y", "z"])
adata = ad.AnnData(np.ones((3, 1), dtype="float32"), obs=obs)
adata.strings_to_categoricals()
logging.getLogger("scquery").info("a stage")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "faiss.loader" not in result.stderr and "as categorical" not in result.stderr, result.stderr
    assert "INFO:scquery:a stage" in result.stderr


def test_package_logs_stages_without_configuring_logging(split, small_config, caplog):
    root_handlers = list(logging.getLogger().handlers)
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    config = {**small_config, "pretrain_epochs": 1, "epochs": 2}
    with caplog.at_level(logging.DEBUG, logger="scquery"):
        train(split[0], label_key="bulk_labels", config=config, verbose=0)
    messages = [record.getMessage() for record in caplog.records if record.name == "scquery"]
    assert "pretraining layer 1/2: 765 → 64, 1 epochs" in messages
    assert any(m.startswith("pretraining layer 2/2 · epoch 1/1 · loss") for m in messages)
    assert any(m.startswith("fine-tuning the classifier · epoch 2/2") for m in messages)
    epoch_levels = {r.levelno for r in caplog.records if " · epoch " in r.getMessage()}
    assert epoch_levels == {logging.DEBUG}  # verbose=0: epochs only at DEBUG
    assert logging.getLogger().handlers == root_handlers
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_progress_bar_names_its_stage(split, capsys):
    X = split[0].X[:200]
    y = split[0].obs["bulk_labels"].cat.codes.to_numpy()[:200] % 3
    config = TrainConfig(hidden_sizes=[8], epochs=2, batch_size=64, validation_fraction=0)
    fit_classifier(build_classifier(X.shape[1], 3, config, seed=0), X, y, config, seed=0, verbose=1)
    err = capsys.readouterr().err
    assert "fine-tuning the classifier" in err and "100%" in err and "epoch 2/2, loss" in err


def test_verbose_auto_is_a_bar_only_where_someone_watches():
    assert resolve_verbose("auto") == (1 if sys.stderr.isatty() else 2)
    assert resolve_verbose(0) == 0 and resolve_verbose(2) == 2
