"""Data-parallel training through Keras's distribution API (JAX backend), as the training option
`devices` asks for it: two devices give the model one device gives, in mixed precision too."""

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
    from scquery.placement import data_parallel
    from scquery.train import train

    reference, _ = pbmc68k_split(seed=0)
    # even sizes everywhere (490 cells, 392 of them training the classifier, batches of 64), so that
    # no row is left out when a batch splits over two devices
    config = {"min_genes": 0, "hidden_sizes": [32, 8], "pretrain_epochs": 2, "epochs": 3,
              "min_cells_per_class": 5, "batch_size": 64, "validation_fraction": 0.2}
    one = train(reference, label_key="bulk_labels", config=config, seed=1, verbose=0)
    # the training options `devices` (every device: 0) and `mixed_precision`
    two = train(reference, label_key="bulk_labels", config={**config, "devices": 0}, seed=1, verbose=0)
    mixed_config = {**config, "devices": 2, "mixed_precision": True}
    mixed = train(reference, label_key="bulk_labels", config=mixed_config, seed=1, verbose=0)
    caller = keras.distribution.DataParallel(devices=jax.devices())
    with caller.scope():
        devices = data_parallel_devices()
        odd = len(SparseBatches(np.zeros((67, 3), np.float32), batch_size=8, seed=0)), devices
        with data_parallel(1):  # devices 1: the caller's own distribution stays
            kept = keras.distribution.distribution() is caller

    def difference(a, b):
        return max(float(np.abs(x - z).max()) for x, z in zip(a.model.get_weights(), b.model.get_weights(),
                                                             strict=True))

    print(json.dumps({
        "devices": devices,
        "odd": odd,
        "kept": kept,
        "largest_weight": max(float(np.abs(a).max()) for a in one.model.get_weights()),
        "weight_difference": difference(one, two),
        "mixed_difference": difference(one, mixed),
        "mixed_dtypes": sorted({str(w.dtype) for w in mixed.model.get_weights()}),
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
    assert result["devices"] == 2 and result["kept"]
    assert result["odd"] == [9, 2]  # 67 rows in batches of 8: the last one cut from 3 rows to 2
    # the same model up to float rounding (the gradient is summed in another order), after 5 epochs
    assert result["weight_difference"] < 1e-3 * max(result["largest_weight"], 1.0)
    assert result["embedding_difference"] < 1e-3
    # mixed precision over the two devices: bfloat16's rounding, a float32 model
    print(result["mixed_difference"], result["largest_weight"])
    assert 1e-5 < result["mixed_difference"] < 0.05 * max(result["largest_weight"], 1.0)
    assert result["mixed_dtypes"] == ["float32"]
