"""The bare Keras baseline's clock, shared by the trainer and GPU benchmarks: `model.fit` with a callback
that times each epoch, so both compare the trainer's loop against the same measurement."""

from __future__ import annotations

import time


def fit_epoch_seconds(model, dataset, epochs: int) -> list[float]:
    """Runs model.fit for `epochs` and returns each epoch's wall time in seconds."""
    import keras  # loaded by the caller's model already; imported here so bench/ starts without TensorFlow

    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[EpochTimer()])
    return times
