"""Data-parallel training through Keras's distribution API (JAX backend): two devices give the model one
device gives."""

import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import pytest

#: Trains the same reference on one device, then split over every device (two virtual CPU devices).
_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, keras, numpy as np
    from scquery.batches import SparseBatches, data_parallel_devices
    from scquery.datasets import pbmc68k_split
    from scquery.train import train

    reference, _ = pbmc68k_split(seed=0)
    # even sizes everywhere (490 cells, 392 of them training the classifier, batches of 64), so that
    # no row is left out when a batch splits over two devices
    config = {"min_genes": 0, "hidden_sizes": [32, 8], "pretrain_epochs": 2, "epochs": 3,
              "min_cells_per_class": 5, "batch_size": 64, "validation_fraction": 0.2}
    one = train(reference, label_key="bulk_labels", config=config, seed=1, verbose=0)
    with keras.distribution.DataParallel(devices=jax.devices()).scope():
        devices = data_parallel_devices()
        two = train(reference, label_key="bulk_labels", config=config, seed=1, verbose=0)
        odd = len(SparseBatches(np.zeros((67, 3), np.float32), batch_size=8, seed=0)), devices
    pairs = list(zip(one.model.get_weights(), two.model.get_weights(), strict=True))
    print(json.dumps({
        "devices": devices,
        "odd": odd,
        "largest_weight": max(float(np.abs(a).max()) for a, _ in pairs),
        "weight_difference": max(float(np.abs(a - b).max()) for a, b in pairs),
        "embedding_difference": float(np.abs(one.reference.obsm["X_scquery"]
                                             - two.reference.obsm["X_scquery"]).max()),
    }))
    """
)


@pytest.mark.skipif(find_spec("jax") is None, reason="JAX is not installed")
def test_two_virtual_devices_train_the_model_one_device_trains():
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["odd"] == [9, 2]  # 67 rows in batches of 8: the last one cut from 3 rows to 2
    # the same model up to float rounding (the gradient is summed in another order), after 5 epochs
    assert result["weight_difference"] < 1e-3 * max(result["largest_weight"], 1.0)
    assert result["embedding_difference"] < 1e-3
