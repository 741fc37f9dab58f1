"""One benchmark task in a process of its own.

TensorFlow keeps some memory for every model a process fits (about 50 MB per run on the real pairs),
so a part of a few hundred runs in one process outgrows a 24 GB machine. The parts that train many
models run each task in a fresh process (`in_own_process`); its log lines go to standard output.
"""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def in_own_process(function, *args):
    """`function(*args)` in a spawned process (a module-level function, picklable arguments), and
    its result."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as process:
        return process.submit(function, *args).result()
