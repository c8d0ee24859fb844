"""Suspected mislabels: the list a person reviews to fix the labels.

1. **Confident mistakes**: wrong predictions ranked by the model's probability of the predicted class
   (highest first; at least `min_confidence`). A model that is sure and "wrong" is often right about
   an image whose label is wrong.
2. **Conflicting duplicates**: the same image, or nearly the same, carrying different labels.
   - exact: the same `source_id` (sha256 of the bytes) appears more than once with different labels;
   - near: a 64-bit difference hash (services.common.image_hash; dHash: the image in greyscale shrunk
     to 9x8, one bit per horizontally adjacent pair, "is the left pixel brighter") within `max_distance` bits (Hamming)
     of another image's hash, and the labels differ in some task where both are known. The default
     distance of 4 bits of 64 catches re-encodings, resizes and small crops of one image while
     leaving merely similar images of a class apart.
   Candidate pairs are found with the pigeonhole rule (multi-index hashing): split the 64 bits into
   max_distance + 1 blocks; two hashes within max_distance bits agree exactly on at least one block,
   so only images sharing a block value are compared, instead of all pairs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from services.evaluator.samples import Sample, TopN

DEFAULT_TOP = 100
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_MAX_DISTANCE = 4
MAX_PAIRS = 1000


class ConfidentMistakes:
    """Keeps the `top` most confident wrong predictions of one task while streaming."""

    def __init__(self, top: int = DEFAULT_TOP, min_confidence: float = DEFAULT_MIN_CONFIDENCE):
        self.min_confidence = min_confidence
        self.kept: TopN[Sample] = TopN(top)
        self.total = 0

    def would_keep(self, true: int, predicted: int, probability: float) -> bool:
        return true != predicted and probability >= self.min_confidence and self.kept.would_keep(probability)

    def count(self, true: int, predicted: int, probability: float) -> None:
        if true != predicted and probability >= self.min_confidence:
            self.total += 1

    def offer(self, sample: Sample) -> None:
        self.kept.offer(sample.probability, sample)

    def ranked(self) -> list[Sample]:
        return self.kept.items()


@dataclass(frozen=True)
class Conflict:
    kind: str  # "exact" or "near"
    a: int  # indices into the evaluation split
    b: int
    distance: int  # Hamming distance of the hashes (0 for exact duplicates)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def conflicting_duplicates(source_ids: list[str], hashes: list[int | None], labels: np.ndarray,
                           max_distance: int = DEFAULT_MAX_DISTANCE, limit: int = MAX_PAIRS) -> list[Conflict]:
    """Pairs of examples that are the same or nearly the same image with different labels.

    `labels` int [n, tasks] (-1 unknown); `hashes` [n] from dhash (None: not decodable).
    Sorted: exact first, then by distance, then by index."""
    n = len(source_ids)
    labels = np.asarray(labels, dtype=np.int64).reshape(n, -1)

    def differ(i: int, j: np.ndarray) -> np.ndarray:
        a, b = labels[i][None, :], labels[j]
        return ((a >= 0) & (b >= 0) & (a != b)).any(axis=1)

    found: dict[tuple[int, int], Conflict] = {}
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, sid in enumerate(source_ids):
        if sid:
            by_id[sid].append(i)
    for members in by_id.values():
        for k, i in enumerate(members[:-1]):
            rest = np.asarray(members[k + 1:])
            for j in rest[differ(i, rest)]:
                found[(i, int(j))] = Conflict("exact", i, int(j), 0)

    valid = np.asarray([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(valid) > 1 and max_distance >= 0:
        values = np.asarray([hashes[i] for i in valid], dtype=np.uint64)
        blocks = max_distance + 1
        edges = np.linspace(0, 64, blocks + 1).astype(int)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            mask = np.uint64((1 << (hi - lo)) - 1)
            keys = (values >> np.uint64(lo)) & mask
            order = np.argsort(keys, kind="stable")
            boundaries = np.flatnonzero(np.diff(keys[order])) + 1
            for bucket in np.split(order, boundaries):
                if len(bucket) < 2:
                    continue
                for k, local in enumerate(bucket[:-1]):
                    others = bucket[k + 1:]
                    distance = _popcount(values[others] ^ values[local])
                    close = others[distance <= max_distance]
                    if not len(close):
                        continue
                    i = int(valid[local])
                    js = valid[close]
                    keep = differ(i, js)
                    for j, d in zip(js[keep], distance[distance <= max_distance][keep], strict=True):
                        pair = (min(i, int(j)), max(i, int(j)))
                        if pair not in found:
                            found[pair] = Conflict("near", pair[0], pair[1], int(d))
    ranked = sorted(found.values(), key=lambda c: (c.kind != "exact", c.distance, c.a, c.b))
    return ranked[:limit]
