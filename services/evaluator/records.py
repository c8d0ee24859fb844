"""The evaluation split of a records build, as `engine.Example`s: the one place the evaluator reads
records (services.common.records.reader.RecordsReader, the contract shared with the tfrecords service).

The split evaluated is `test` when the build has test examples, else `val`: both keep the natural
class distribution (only `train` is oversampled). Reading is deterministic, so every pass over the
split (the evaluation, a baseline re-run, the thumbnails of duplicates) sees the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from services.common.errors import FailedPrecondition
from services.common.records.reader import RecordsReader
from services.common.storage import LocalObjectStore, ObjectStore
from services.evaluator.engine import Example

SPLITS = ("test", "val")


class EvaluationRecords:
    """Re-iterable: every call of `examples()` reads the split again from its first example."""

    def __init__(self, store: ObjectStore, records_uri: str, cache_dir: Path | None, batch_size: int = 64):
        self.uri = records_uri
        self.batch_size = batch_size
        self.reader = RecordsReader(store, records_uri, cache_dir)
        self.tasks: list[dict] = list(self.reader.labels.get("tasks", []))
        if not self.tasks:
            raise FailedPrecondition(f"records {records_uri} name no tasks in their manifest's labels")
        counts = {split: self.reader.num_examples(split) for split in SPLITS}
        self.split = next((s for s in SPLITS if counts[s] > 0), "")
        if not self.split:
            raise FailedPrecondition(f"records {records_uri} have no test or val examples to evaluate on")
        self.count = counts[self.split]

    @classmethod
    def from_directory(cls, path: str | Path, batch_size: int = 64) -> EvaluationRecords:
        """A build on local disk (`…/records/<build_id>/`, as `classforge records build --out` writes)."""
        path = Path(path).resolve()
        return cls(LocalObjectStore(path.parent.parent), f"{path.parent.name}/{path.name}", None, batch_size)

    def examples(self) -> Iterator[Example]:
        dataset = self.reader.dataset(self.split, batch_size=self.batch_size, decode=False, shuffle=False,
                                      deterministic=True, dhash=True)
        for batch in dataset.as_numpy_iterator():
            labels = np.asarray(batch["labels"]).reshape(len(batch["encoded"]), -1)
            hashes = np.asarray(batch["dhash"], dtype=np.int64).view(np.uint64)  # image/dhash is two's complement
            for encoded, row, sid, name, value, known in zip(batch["encoded"], labels, batch["source_id"],
                                                             batch["filename"], hashes, batch["has_dhash"],
                                                             strict=True):
                yield Example(bytes(encoded), tuple(int(v) for v in row), _text(sid), _text(name),
                              int(value) if known else None)

    def identity(self) -> dict:
        """What makes two evaluations comparable: the same records build and split."""
        return {"build_id": self.reader.build_id, "split": self.split, "examples": self.count}


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
