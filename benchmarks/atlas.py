"""Atlas scale, against issue 21's targets: `train()` reading its reference from disk (an h5ad opened
with `backed='r'`) at 100,000 and 1,000,000 cells, its peak memory; a 100,000-cell query (another
draw: another study's cells) against each bundle, inside `query()` and through the CLI (a new process,
start-up included); the largest bundle extended with 1,000,000 new annotated cells (another draw)
through `scquery extend`; data-parallel training over two virtual CPU devices against one (JAX
backend). Every stage runs in its own process."""

import os
import shutil
import tempfile
from pathlib import Path

from .speed import run_stage

FULL_SIZES, QUICK_SIZES = [100_000, 1_000_000], [5_000, 20_000]
FULL_QUERY, QUICK_QUERY = 100_000, 2_000
#: One epoch per stage and a narrower first layer (the embedding keeps its 100 dimensions): this part
#: measures memory and the query; `speed` measures throughput at the default network.
OPTIONS = {"pretrain_epochs": 1, "epochs": 1, "patience": 1, "hidden_sizes": [128, 100]}
PARALLEL_CELLS, QUICK_PARALLEL_CELLS = 20_000, 2_000
EXTEND_CELLS, QUICK_EXTEND_CELLS = 1_000_000, 5_000
#: The targets of issues 21 and 33 measured here.
TARGETS = {
    "train_peak_rss_1m_gb": 3.0,
    "peak_growth_100k_to_1m_gb": 1.0,
    "index_build_1m_s": 60.0,
    "cli_query_100k_vs_1m_s": 20.0,
    "cli_query_peak_rss_gb": 3.0,
    "recall_at_15": 0.95,
    "prediction_agreement": 0.995,
    "cli_extend_1m_s": 180.0,
}


def run_atlas(*, quick, log=print):
    sizes = QUICK_SIZES if quick else FULL_SIZES
    n_query = QUICK_QUERY if quick else FULL_QUERY
    runs, start_load = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scquery-atlas-") as folder:
        folder = Path(folder)
        query_data = str(folder / "query.h5ad")
        run_stage("generate", log, n_cells=n_query, seed=1, path=query_data)
        extension = None
        for n_cells in sizes:
            log(f"atlas: {n_cells} reference cells, read from disk")
            data, bundle = str(folder / f"ref_{n_cells}.h5ad"), str(folder / f"bundle_{n_cells}")
            run = {
                "n_cells": n_cells,
                "generate": run_stage("generate", log, n_cells=n_cells, seed=0, path=data),
            }
            run["train"] = run_stage("train", log, data=data, bundle=bundle, backed=True, options=OPTIONS)
            Path(data).unlink(missing_ok=True)
            if "error" not in run["train"]:
                answer = folder / "answer.h5ad"
                run["cli_query"] = run_stage(
                    "cli_query", log, data=query_data, bundle=bundle, out=str(answer), keep=True
                )
                if "error" not in run["cli_query"]:
                    run["search_accuracy"] = run_stage(
                        "search_accuracy", log, data=query_data, bundle=bundle, answer=str(answer)
                    )
                answer.unlink(missing_ok=True)
            if n_cells == sizes[-1] and "error" not in run["train"]:
                extension = _extend(folder, bundle, QUICK_EXTEND_CELLS if quick else EXTEND_CELLS, log)
            shutil.rmtree(bundle, ignore_errors=True)
            runs.append(run)
    n_parallel = QUICK_PARALLEL_CELLS if quick else PARALLEL_CELLS
    log(f"atlas: data-parallel training, {n_parallel} cells, one and two virtual devices")
    parallel = [run_stage("parallel", log, n_cells=n_parallel, devices=d) for d in (1, 2)]
    return {
        "runs": runs,
        "query_cells": n_query,
        "options": OPTIONS,
        "parallel": parallel,
        "extend": extension,
        "load_average": [start_load, os.getloadavg()[0]],
    }


def _extend(folder, bundle, n_cells, log):
    """`scquery extend` of `bundle` with `n_cells` new annotated cells (another draw)."""
    log(f"atlas: extending the bundle with {n_cells} cells")
    data = str(folder / "extension.h5ad")
    run_stage("generate", log, n_cells=n_cells, seed=2, path=data)
    result = run_stage("cli_extend", log, data=data, bundle=bundle, out=str(folder / "extended"))
    Path(data).unlink(missing_ok=True)
    return {"n_cells": n_cells, **result}
