"""Speed and memory on synthetic counts: every stage in its own process, next to the machine's own
dense matmul rate (the hardware bound of the network's training)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FULL_SIZES, QUICK_SIZES = [10_000, 100_000, 1_000_000], [2_000, 5_000]
FULL_QUERY, QUICK_QUERY = 100_000, 1_000
STAGE_TIMEOUT_S = 3600
THROUGHPUT_CELLS, QUICK_THROUGHPUT_CELLS, THROUGHPUT_BATCHES = 30_000, 1_000, [256, 512, 1024]


def run_stage(name, log=print, *, timeout=STAGE_TIMEOUT_S, **arguments):
    """Run one stage in a child process; its figures, or `{'error': ...}` when it fails."""
    command = [sys.executable, "-m", "benchmarks.stages", name, json.dumps(arguments)]
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"    stage {name} timed out after {timeout} s")
        return {"error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        log(f"    stage {name} failed: {tail[0]}")
        return {"error": tail[0]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"    {name}: " + ", ".join(f"{k} {_short(v)}" for k, v in result.items()))
    return result


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def training_flops(n_genes, hidden_sizes, n_classes):
    """The matmul FLOPs per cell that one epoch needs: fine-tuning and greedy pretraining.

    Fine-tuning: forward (2 per weight) and weight gradients (2 per weight) of every layer, and the
    input gradients (2 per weight) of every layer but the first (the data need none): 6 W - 2 w0.
    A pretraining layer of w weights trains a tied autoencoder: encode and decode (2 × 2w), the
    decoder's and encoder's weight gradients (2 × 2w) and the code's gradient (2w), 10 w, on the
    codes of the frozen layers before it (a forward pass: 2 × their weights).
    """
    widths = [n_genes, *hidden_sizes]
    layer_weights = [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
    finetune = 6 * (sum(layer_weights) + hidden_sizes[-1] * n_classes) - 2 * layer_weights[0]
    pretrain = sum(10 * w + 2 * sum(layer_weights[:i]) for i, w in enumerate(layer_weights))
    return {"finetune_flops_per_cell": finetune, "pretrain_flops_per_cell": pretrain}


def run_speed(*, quick, log=print):
    """Figures of every stage at every size, a query against each size's reference, and the
    throughput breakdown next to the machine's large-matmul peak."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    n_query = QUICK_QUERY if quick else FULL_QUERY
    runs = []
    with tempfile.TemporaryDirectory(prefix="scquery-bench-") as folder:
        folder = Path(folder)
        query_data = str(folder / "query.h5ad")
        generated = run_stage("generate", log, n_cells=n_query, seed=1, path=query_data)
        for n_cells in sizes:
            log(f"speed: {n_cells} cells")
            data, bundle = str(folder / f"ref_{n_cells}.h5ad"), str(folder / f"bundle_{n_cells}")
            run = {
                "n_cells": n_cells,
                "generate": run_stage("generate", log, n_cells=n_cells, seed=0, path=data),
            }
            run["train"] = run_stage("train", log, data=data, bundle=bundle)
            run["embed"] = run_stage("embed", log, data=data, bundle=bundle)
            run["query"] = run_stage("query", log, data=query_data, bundle=bundle)
            runs.append(run)
            Path(data).unlink(missing_ok=True)
            if Path(bundle).exists():
                shutil.rmtree(bundle)
    trained = next((run["train"] for run in runs if "error" not in run["train"]), None)
    throughput = {}
    if trained:
        log("speed: throughput breakdown")
        throughput = run_stage(
            "throughput",
            log,
            n_cells=QUICK_THROUGHPUT_CELLS if quick else THROUGHPUT_CELLS,
            hidden_sizes=trained["hidden_sizes"],
            n_classes=trained["n_classes"],
            batch_sizes=[trained["batch_size"]] if quick else THROUGHPUT_BATCHES,
        )
    return {"runs": runs, "query_cells": n_query, "query_generate": generated, "throughput": throughput}


def run_throughput(*, quick, log=print):
    """The throughput breakdown alone (the stage of `run_speed`), at the default network, with
    `train()` on the same cells in the same process, between two measures of the peak."""
    from scquery.config import TrainConfig

    config = TrainConfig()
    log("throughput: breakdown and train() against the peak")
    start_load = os.getloadavg()[0]
    result = run_stage(
        "throughput",
        log,
        n_cells=QUICK_THROUGHPUT_CELLS if quick else THROUGHPUT_CELLS,
        hidden_sizes=config.hidden_sizes,
        n_classes=10,
        batch_sizes=[config.batch_size] if quick else THROUGHPUT_BATCHES,
        with_train=True,
    )
    return {**result, "load_average": [start_load, os.getloadavg()[0]]}
