"""Bounded selections made while streaming over the evaluation split: the examples whose images the
gallery, the mislabel review and the CAMs need are kept (bytes included); all others are dropped, so
memory does not grow with the split."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    """One evaluated image of one task, with what the model said about it."""

    index: int  # position in the evaluation split
    source_id: str
    filename: str
    true: int
    predicted: int
    probability: float  # the model's probability of `predicted`
    true_probability: float  # the model's probability of `true`
    encoded: bytes = field(repr=False)

    @property
    def correct(self) -> bool:
        return self.true == self.predicted

    def describe(self, classes: list[str]) -> dict:
        return {"index": self.index, "source_id": self.source_id, "filename": self.filename,
                "true": classes[self.true], "predicted": classes[self.predicted],
                "probability": self.probability, "true_probability": self.true_probability}


class TopN(Generic[T]):
    """The n items with the highest scores seen so far (ties: the earliest seen wins)."""

    def __init__(self, n: int):
        self.n = n
        self._heap: list[tuple[float, int, T]] = []
        self._counter = itertools.count()

    def offer(self, score: float, item: T) -> None:
        if self.n <= 0:
            return
        entry = (score, -next(self._counter), item)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def would_keep(self, score: float) -> bool:
        """Whether an item with `score` would enter now (skips building items that would not)."""
        return self.n > 0 and (len(self._heap) < self.n or score > self._heap[0][0])

    def items(self) -> list[T]:
        """Highest score first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (e[0], e[1]), reverse=True)]

    def __len__(self) -> int:
        return len(self._heap)
