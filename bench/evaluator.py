"""Evaluation throughput: the evaluator's pass (services.evaluator.engine.evaluate: serving signature in
batches, one batch ahead in a worker thread, plus the gallery/mislabel/CAM selections) against a
plain loop that calls the same SavedModel's serving signature on the same encoded images one batch at
a time and keeps the outputs. Same process, same data, interleaved runs.

The examples carry their difference hash (`image/dhash`, computed once by ingest) as current records
do; the "no image/dhash" row is the fallback for records built from older datasets, where
the evaluator decodes every image a second time to hash it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import tensorflow as tf

from bench.table import Row
from services.common import serving_signature as contract
from services.evaluator.engine import Options, evaluate
from services.evaluator.model import ServingModel
from tests.support.colour_model import ColourRecords, write_colour_model

IMAGES, IMAGE_SIDE, MODEL_SIDE, BATCH, ROUNDS = 2048, 64, 64, 64, 5


def _plain_loop(fn, encoded: list[bytes]) -> float:
    started = time.perf_counter()
    kept = []
    for i in range(0, len(encoded), BATCH):
        out = fn(**{contract.INPUT_KEY: tf.constant(encoded[i:i + BATCH])})
        kept.append({k: v.numpy() for k, v in out.items()})
    return len(encoded) / (time.perf_counter() - started)


def _ours(model: ServingModel, records: ColourRecords, out: Path | None, artefacts: bool = True) -> float:
    options = Options(batch_size=BATCH, artefacts=artefacts)
    result = evaluate(model, records.examples(), records.tasks, out, options)
    return result.images_per_second


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as root:
        model = ServingModel(write_colour_model(Path(root) / "model", size=MODEL_SIDE))
        records = ColourRecords(count=IMAGES, size=IMAGE_SIDE)
        unhashed = ColourRecords(count=IMAGES, size=IMAGE_SIDE, dhash=False)
        encoded = [e.encoded for e in records.examples()]
        _plain_loop(model.fn, encoded[:BATCH * 2])  # warm up the signature
        plain, full, fallback, numbers = [], [], [], []
        for r in range(ROUNDS):
            plain.append(_plain_loop(model.fn, encoded))
            full.append(_ours(model, records, Path(root) / f"report{r}"))
            fallback.append(_ours(model, unhashed, Path(root) / f"fallback{r}"))
            numbers.append(_ours(model, records, None, False))
    return [
        Row("evaluator", "eval pass images/s (with artefacts)", max(full),
            "plain loop over the serving signature", max(plain), "/s"),
        Row("evaluator", "eval pass images/s (no image/dhash)", max(fallback),
            "plain loop over the serving signature", max(plain), "/s"),
        Row("evaluator", "eval pass images/s (numbers only)", max(numbers),
            "plain loop over the serving signature", max(plain), "/s"),
    ]


if __name__ == "__main__":
    from bench.table import render

    print(render(run()))
