"""Where training runs: the backend's device (an accelerator or the CPU) and its memory, whether the
training data may be kept on it, and a data-parallel scope over several devices.

The one module that asks the backend (JAX, TensorFlow or PyTorch) about its devices; model code stays
on `keras.ops`. Keeping the data on the device pays on an accelerator only: there it spares the step
the host's densifying and the copy of every batch; on the CPU the data are already where the step
runs (docs/SCALING.md, "On a GPU").
"""

import contextlib
import os

import keras

from .errors import ScqueryError

#: The share of an accelerator's free memory that training data kept on it may take (the rest holds
#: the model, the optimizer's state and the batches' activations).
DEVICE_SHARE = 0.5


def device_kind():
    """The backend's default device in words: its name for an accelerator (e.g. 'NVIDIA H200'),
    else 'cpu'."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "cpu" if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return "cpu"


def memory_stats():
    """The default device's memory in bytes, `{'limit', 'in_use', 'peak'}`, where the backend
    reports it (JAX and PyTorch accelerators); None on the CPU or where it does not."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats:
            return {
                "limit": stats.get("bytes_limit"),
                "in_use": stats.get("bytes_in_use"),
                "peak": stats.get("peak_bytes_in_use"),
            }
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return {"limit": total, "in_use": total - free, "peak": torch.cuda.max_memory_allocated()}
    return None


def device_budget():
    """The bytes of the device's memory that training data kept on it may take: `DEVICE_SHARE` of an
    accelerator's free memory (of each device, under a data-parallel scope); None on the CPU, or
    where the backend does not report its memory (there the data stay on the host)."""
    stats = memory_stats()
    if not stats or stats["limit"] is None or stats["in_use"] is None:
        return None
    return int(DEVICE_SHARE * (stats["limit"] - stats["in_use"]))


def data_parallel(devices):
    """A scope in which training splits each batch over `devices` devices (0: every device Keras
    lists, those of every process once they joined: `join_processes`), through Keras's
    `DataParallel` (JAX backend); with 1, a scope that changes nothing (a distribution the caller
    set stays in effect). scquery's batches shard themselves over the processes
    (`scquery.batches.data_shard`), so Keras's own sharding of datasets is off."""
    if devices == 1:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend != "jax":
        asked = "every device" if devices == 0 else f"{devices} devices"
        raise ScqueryError(
            f"Training on {asked} needs Keras's JAX backend, and it runs on {backend}; "
            "set KERAS_BACKEND=jax (with JAX installed: pip install 'scquery[jax]') or train on 1 device."
        )
    join_processes()
    available = keras.distribution.list_devices()
    if devices > len(available):
        raise ScqueryError(
            f"Training on {devices} devices was asked for, and the backend sees {len(available)} "
            f"({', '.join(available)}); ask for at most {len(available)}, or 0 for all of them."
        )
    chosen = available[:devices] if devices else available
    return keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False).scope()


def several_processes():
    """Whether this process is one of several that train together: the tasks of a SLURM step
    (`srun`: SLURM_STEP_NODELIST, SLURM_NTASKS), or the processes Keras's
    KERAS_DISTRIBUTION_NUM_PROCESSES counts."""
    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1:
        return True
    return "SLURM_STEP_NODELIST" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def join_processes():
    """Join the other processes of `several_processes` (`keras.distribution.initialize()`: JAX reads
    the SLURM step's layout, or Keras the KERAS_DISTRIBUTION_* variables), once, before the
    backend has computed anything."""
    if keras.backend.backend() != "jax" or not several_processes():
        return
    import jax

    if not jax.distributed.is_initialized():
        keras.distribution.initialize()


def process_index():
    """This process's place among the processes training together (0 alone): the one that writes."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()
