"""Keras callbacks shared by the training stages."""

import logging
import time

import keras
from tqdm.auto import tqdm

from .logs import logger

#: The logs `EpochTimer` adds: not metrics of the model.
TIMES = ("seconds", "cpu_seconds")


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall-clock seconds to the logs as `seconds`, and the CPU seconds this process
    used in it (every thread) as `cpu_seconds` (so to `History` too: on a machine shared with other
    work, the CPU seconds tell what the epoch cost apart from what it waited)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start[0]
            logs["cpu_seconds"] = time.process_time() - self._start[1]


class StageProgress(keras.callbacks.Callback):
    """Reports the epochs of one training stage, each labelled with the stage's name.

    `verbose` as Keras's: 1 draws a progress bar on stderr (tqdm) and logs the epochs at DEBUG level;
    2 logs one INFO line per epoch (`pretraining layer 1/2 · epoch 3/10 · loss 0.0123 · 0.8 s`) to the
    `scquery` logger; 0 logs the epochs at DEBUG level only. The bar also shows the stage's `size`
    (e.g. `2,000 → 500`). Place it after `EpochTimer`.
    """

    def __init__(self, stage, *, verbose, size=None):
        super().__init__()
        self.stage, self.verbose, self.size = stage, verbose, size
        self._bar = None

    def on_train_begin(self, logs=None):
        self._epochs, self._steps = self.params["epochs"], self.params.get("steps") or 1
        if self.verbose == 1:
            self._bar = tqdm(
                total=self._epochs * self._steps,
                desc=f"{self.stage} ({self.size})" if self.size else self.stage,
                unit="batch",
                bar_format="{desc} {bar:30} {percentage:3.0f}%{postfix} [{elapsed}<{remaining}]",
                leave=True,
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._steps_done = epoch + 1, 0
        if self._bar is not None:
            self._bar.set_postfix_str(f"epoch {self._epoch}/{self._epochs}", refresh=False)

    def on_train_batch_end(self, batch, logs=None):
        # With `steps_per_execution`, Keras calls this once per group of steps, with `batch` the group's
        # last step, even past the epoch's end.
        if self._bar is not None:
            loss = (logs or {}).get("loss")
            loss = "" if loss is None else f", loss {float(loss):.4f}"
            self._bar.set_postfix_str(f"epoch {self._epoch}/{self._epochs}{loss}", refresh=False)
            done = min(batch + 1, self._steps)
            self._bar.update(done - self._steps_done)
            self._steps_done = done

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{self.stage} · epoch {epoch + 1}/{self._epochs}"]
        metrics = sorted(set(logs) - set(TIMES), key=lambda k: (k.startswith("val_"), "loss" not in k, k))
        parts += [f"{key} {float(logs[key]):.4f}" for key in metrics]
        if "seconds" in logs:
            parts.append(f"{logs['seconds']:.1f} s")
        logger.log(logging.INFO if self.verbose == 2 else logging.DEBUG, " · ".join(parts))

    def on_train_end(self, logs=None):
        if self._bar is not None:
            if self._epoch < self._epochs:
                self._bar.set_postfix_str(f"stopped early after epoch {self._epoch}/{self._epochs}")
            self._bar.close()
            self._bar = None
