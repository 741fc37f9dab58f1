"""Training on a GPU (`--only gpu`): scquery's own Keras path on the JAX backend, on synthetic counts
made on the host, against the device's own large-matmul peak measured in the same run.

Each step runs in its own process (`python -m benchmarks.gpu STEP JSON`, KERAS_BACKEND=jax), so that
its peak device memory is its own; the last stdout line is a JSON object of its figures:

- `probe`: the device, its memory, and one large matmul in bfloat16 and float32 (its peak);
- `data`: 1M cells × 2,000 genes (about 325 values a cell), drawn in threads, log-normalized and
  saved for the others, and the counts written as an h5ad;
- `fit`, per stage (greedy pretraining, every layer; fine-tuning) and precision (float32,
  `mixed_bfloat16`): cells/s of an epoch (the 2nd) at each batch size, the data held on the device
  (`scquery.batches.device_rows`); where a step's time goes (the input pipeline's host work and copy,
  one compiled step per dispatch, steps looped on the device); the peak device memory; and once
  the batches densified on the host (`SparseBatches`) instead, at the default batch size;
- `train`: `train()` end to end from the h5ad on disk, at the default options.

Without a GPU the part runs at the quick size on the CPU and says so: no GPU figures.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_GENES, N_CLASSES = 2000, 10
#: scQuery's network (2,000 → 1,136 → 100), as the plain-JAX anchor of the issue measured it.
FULL = {"n_cells": 1_000_000, "hidden_sizes": [1136, 100], "batch_sizes": [256, 1024, 4096], "peak_n": 8192}
QUICK = {"n_cells": 4_000, "hidden_sizes": [64, 16], "batch_sizes": [256], "peak_n": 1024}
#: The whole part's seconds on a GPU: each step gets what is left, so that it ends within 8
#: minutes; on the CPU (the quick size, on a machine that may be shared) more.
BUDGET_S, CPU_BUDGET_S = 470, 1800
#: `train()`'s options at the quick size (the full size uses the defaults).
QUICK_TRAIN = {"pretrain_epochs": 1, "epochs": 2, "hidden_sizes": [64, 16]}
PRECISIONS = ("float32", "mixed_bfloat16")
#: Steps whose time is measured alone (per dispatch, and looped on the device).
BREAKDOWN_STEPS = 50
#: Issue 32's targets on one H200 (mixed precision's accuracy is the quality part's: real data).
TARGETS = {"pretrain_cells_per_s": 5e6, "finetune_cells_per_s": 5e6, "train_s": 60.0}


def run_gpu(*, quick, log=print):
    """The part's figures: the device, the data, each stage's throughput and `train()`. The steps
    that judge the targets run first; the host's batches, a comparison, last."""
    start = time.perf_counter()
    settings = QUICK if quick else FULL
    probe = _step("probe", log, BUDGET_S, peak_n=settings["peak_n"])
    if "error" in probe:
        return {"error": probe["error"]}
    gpu = probe["platform"] != "cpu"
    budget = BUDGET_S if gpu else CPU_BUDGET_S
    if not gpu:
        log(f"gpu: no GPU present (the device is {probe['device']}): the quick size, on the CPU")
        settings = QUICK

    def left():
        return max(1, int(budget - (time.perf_counter() - start)))

    result = {"gpu": gpu, "quick": settings is QUICK, **settings, "probe": probe}
    result["load_average"] = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="scquery-gpu-") as folder:
        data = {"matrix": str(Path(folder) / "processed.npz"), "counts": str(Path(folder) / "counts.h5ad")}
        result["data"] = _step("data", log, left(), n_cells=settings["n_cells"], **data)
        fit = {"data": data["matrix"], "hidden_sizes": settings["hidden_sizes"]}
        result["fits"] = [
            _step(
                "fit",
                log,
                left(),
                **fit,
                stage=stage,
                batch_sizes=settings["batch_sizes"],
                precision=precision,
            )
            for stage in ("pretrain", "finetune")
            for precision in PRECISIONS
        ]
        options = QUICK_TRAIN if settings is QUICK else {}
        result["train"] = _step("train", log, left(), counts=data["counts"], options=options)
        result["fits"] += [
            _step(
                "fit",
                log,
                left(),
                **fit,
                stage=stage,
                batch_sizes=settings["batch_sizes"][:1],
                pipeline="host",
            )
            for stage in ("pretrain", "finetune")
        ]
    result["load_average"].append(os.getloadavg()[0])
    result["seconds"] = time.perf_counter() - start
    return result


def _step(name, log, timeout, **arguments):
    """Run one step in a child process on the JAX backend; its figures, or `{'error': ...}`."""
    command = [sys.executable, "-m", "benchmarks.gpu", name, json.dumps(arguments)]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    root = Path(__file__).resolve().parents[1]
    shown = {k: v for k, v in arguments.items() if k not in ("data", "counts", "matrix")}
    log(f"gpu: {name} " + " ".join(f"{k}={v}" for k, v in shown.items()))
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"    {name} timed out after {timeout} s (the part's {BUDGET_S} s were spent)")
        return {"error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        log(f"    {name} failed: {tail[0]}")
        return {"error": tail[0]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    log("    " + json.dumps(result)[:600])
    return result


# The steps, each in its own process.


def probe_step(*, peak_n):
    """The device, its memory and its large-matmul peak (bfloat16 and float32, best of 3), of
    `peak_n`³ on a GPU and of the quick size's on the CPU (where 8,192³ would take minutes)."""
    import jax
    import keras

    from scquery.placement import device_kind, memory_stats

    device = jax.devices()[0]
    peak_n = peak_n if device.platform != "cpu" else QUICK["peak_n"]
    peaks = {
        f"peak_{dtype}_tflops": _matmul_tflops(keras, jax, dtype, peak_n) for dtype in ("bfloat16", "float32")
    }
    return {
        "device": device_kind(),
        "platform": device.platform,
        "devices": jax.device_count(),
        "memory": memory_stats(),
        "jax": jax.__version__,
        "keras": keras.__version__,
        "matmul_n": peak_n,
        **peaks,
    }


def _matmul_tflops(keras, jax, dtype, n, repeats=10):
    """TFLOP/s of an n × n × n `keras.ops.matmul` in `dtype` (JAX's default precision), best of 3."""
    a = keras.random.normal((n, n), dtype=dtype, seed=0)
    b = keras.random.normal((n, n), dtype=dtype, seed=1)
    jax.block_until_ready(keras.ops.matmul(a, b))
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = keras.ops.matmul(a, b)
        jax.block_until_ready(out)
        best = max(best, 2.0 * n**3 * repeats / (time.perf_counter() - start))
    return best / 1e12


def data_step(*, n_cells, matrix, counts):
    """Synthetic counts drawn on the host in threads; the log-normalized matrix and the labels
    saved to `matrix` (npz), the counts written to `counts` (h5ad)."""
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    from .stages import LABEL_KEY
    from .synthetic import synthetic_counts

    start = time.perf_counter()
    adata = synthetic_counts(n_cells, n_genes=N_GENES, n_types=N_CLASSES, workers=os.cpu_count())
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    adata.write_h5ad(counts)
    write_s = time.perf_counter() - start
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sp.save_npz(matrix, adata.X, compressed=False)
    np.save(matrix + ".labels.npy", adata.obs[LABEL_KEY].cat.codes.to_numpy().astype(np.int64))
    return {
        "n_cells": n_cells,
        "n_genes": N_GENES,
        "values_per_cell": adata.X.nnz / n_cells,
        "csr_gb": (adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes) / 1e9,
        "generate_s": generate_s,
        "write_h5ad_s": write_s,
        "threads": os.cpu_count(),
    }


def fit_step(*, data, stage, hidden_sizes, batch_sizes, precision="float32", pipeline="device", seed=0):
    """Cells/s of an epoch of `stage` ('pretrain': every greedy layer; 'finetune') at each batch
    size, through `pretrain_greedy` / `fit_classifier` with the data held on the device
    (`pipeline='device'`) or densified on the host ('host'); where a step's time goes; the peak
    device memory."""
    import jax
    import keras
    import numpy as np
    import scipy.sparse as sp

    from scquery.batches import RowBatches, SparseBatches, device_rows
    from scquery.classifier import build_classifier, fit_classifier, training_model
    from scquery.config import TrainConfig
    from scquery.layers import DenseLayerAutoencoder
    from scquery.placement import memory_stats
    from scquery.pretrain import FIT_OPTIONS, MIXED_PRECISION, denoising_model, pretrain_greedy

    from .speed import training_flops

    X, y = sp.load_npz(data).tocsr(), np.load(data + ".labels.npy")
    n_cells, n_genes = X.shape
    mixed = precision == MIXED_PRECISION
    start = time.perf_counter()
    rows = device_rows(X, force=True) if pipeline == "device" else None
    if rows is not None:
        jax.block_until_ready([weight.value for weight in rows.weights])  # the copy done
    result = {
        "stage": stage,
        "precision": precision,
        "pipeline": pipeline,
        "hidden_sizes": hidden_sizes,
        "to_device_s": time.perf_counter() - start if rows is not None else None,
        "memory_with_data": memory_stats(),
        **training_flops(n_genes, hidden_sizes, N_CLASSES),
        "pretrain_layer0_flops_per_cell": 10 * n_genes * hidden_sizes[0],
    }
    Batches = SparseBatches if rows is None else RowBatches
    runs = []
    for batch_size in batch_sizes:
        run = {"batch_size": batch_size}
        config = TrainConfig(
            hidden_sizes=hidden_sizes,
            pretrain_epochs=2,
            epochs=2,
            batch_size=batch_size,
            validation_fraction=0.0,
            mixed_precision=mixed,
        )
        if stage == "pretrain":
            _, history, _ = pretrain_greedy(X, config, rows=rows, seed=seed, verbose=0)
            run["layer_s"] = [layer["seconds"][-1] for layer in history]
            run["epoch_s"] = sum(run["layer_s"])
            run["cells_per_s"] = n_cells / run["epoch_s"]
            dae = DenseLayerAutoencoder(
                [hidden_sizes[0]],
                activation="tanh",
                dropout=0.2,
                seed=seed,
                dtype=MIXED_PRECISION if mixed else None,
            )
            model = denoising_model(dae, n_genes, rows=rows)
            model.compile(keras.optimizers.Adam(1e-3), loss="mse", **FIT_OPTIONS)
            batches = Batches(X, batch_size=batch_size, seed=seed)
        else:
            model = build_classifier(n_genes, N_CLASSES, config, seed=seed)
            history = fit_classifier(model, X, y, config, rows=rows, seed=seed, verbose=0)
            run["epoch_s"] = history["seconds"][-1]
            run["cells_per_s"] = n_cells / run["epoch_s"]
            model = training_model(
                build_classifier(n_genes, N_CLASSES, config, seed=seed),
                rows=rows,
                mixed_precision=mixed,
            )
            model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", **FIT_OPTIONS)
            batches = Batches(X, y, batch_size=batch_size, seed=seed)
        run["steps"] = len(batches)
        try:  # through Keras's JAX trainer's own functions: a newer Keras may move them
            run.update(step_breakdown(model, batches))
        except Exception as error:  # the epoch's figures stand without it
            run["breakdown_error"] = f"{type(error).__name__}: {error}"
        runs.append(run)
    result["runs"] = runs
    result["memory"] = memory_stats()
    return result


def step_breakdown(model, batches, steps=BREAKDOWN_STEPS):
    """Microseconds per step (JAX backend): the input pipeline alone (a batch made on the host and
    copied to the device), the compiled training step dispatched once per step from Python (what
    `fit` does, without the pipeline), and `steps` steps looped on the device in one compiled call
    (the step's own time: the first pretraining layer's, or the classifier's)."""
    import jax

    n = min(len(batches), 200)
    start = time.perf_counter()
    for index in range(n):
        jax.block_until_ready(jax.device_put(batches[index]))
    input_us = (time.perf_counter() - start) / n * 1e6
    batch = batches[0]
    model.train_on_batch(*batch)  # builds the optimizer and the metrics
    trainable, fixed, optimizer, metrics = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
    )
    data = jax.device_put(batch)

    def step(carry, fixed, data):
        trainable, optimizer, metrics = carry
        _, (trainable, _, optimizer, metrics) = model.train_step((trainable, fixed, optimizer, metrics), data)
        return trainable, optimizer, metrics

    one = jax.jit(step)
    loop = jax.jit(
        lambda carry, fixed, data: jax.lax.fori_loop(0, steps, lambda i, c: step(c, fixed, data), carry)
    )
    carry = (trainable, optimizer, metrics)
    jax.block_until_ready(one(carry, fixed, data))
    jax.block_until_ready(loop(carry, fixed, data))
    start = time.perf_counter()
    state = carry
    for _ in range(steps):
        state = one(state, fixed, data)
    jax.block_until_ready(state)
    dispatch_us = (time.perf_counter() - start) / steps * 1e6
    start = time.perf_counter()
    jax.block_until_ready(loop(carry, fixed, data))
    device_us = (time.perf_counter() - start) / steps * 1e6
    return {"input_us": input_us, "dispatch_us": dispatch_us, "device_us": device_us}


def train_step(*, counts, options):
    """`train()` end to end from the h5ad `counts` on disk (read included), with `options` on the
    defaults: its seconds, the epochs' seconds from its history, and whether the data were held
    on the device."""
    import anndata as ad

    from scquery.config import load_train_config
    from scquery.placement import device_budget, memory_stats
    from scquery.train import train

    from .stages import LABEL_KEY

    config = load_train_config(options)
    start = time.perf_counter()
    adata = ad.read_h5ad(counts)
    read_s = time.perf_counter() - start
    bundle = train(adata, label_key=LABEL_KEY, config=config, seed=0, verbose=0)
    total = time.perf_counter() - start
    history = bundle.history
    pretrain = [
        sum(epochs) for epochs in zip(*(stage["seconds"] for stage in history["pretrain"]), strict=True)
    ]
    return {
        "n_cells": adata.n_obs,
        "options": config.to_dict(),
        "train_s": total,
        "read_s": read_s,
        "pretrain_epoch_s": pretrain,
        "finetune_epoch_s": history["classifier"]["seconds"],
        "val_accuracy": history["classifier"].get("val_accuracy", [None])[-1],
        "device_budget_gb": None if device_budget() is None else device_budget() / 1e9,
        "memory": memory_stats(),
    }


STEPS = {"probe": probe_step, "data": data_step, "fit": fit_step, "train": train_step}


if __name__ == "__main__":
    name, arguments = sys.argv[1:3]
    print(json.dumps(STEPS[name](**json.loads(arguments))))
