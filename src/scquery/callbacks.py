"""Keras callbacks shared by the training stages."""

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall-clock seconds to the logs as `seconds` (so to `History` too)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start
