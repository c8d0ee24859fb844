"""Stratified splitting and class balancing, deterministic for a seed.

Rules (the practitioner's workflow of the design):

- The split is made on **unique images** (one example per content hash), so an image and its exact
  duplicates can never sit in two splits. It is stratified on the first task's label: each class is
  shuffled with the seed and cut, `round(n * fraction)` images to test and to validation (half
  rounds up), at least one image always left for training. Examples whose first-task label is
  unknown (-1) form a stratum of their own.
- Balancing touches the **training split only**; validation and test keep the natural distribution.
  With an optional cap, classes above `max_per_class` are first undersampled to it (a seeded sample).
  Then every class below `ceil(largest / delta)` is oversampled to exactly that count: whole repeats
  of the class, plus a seeded sample without replacement for the remainder. Afterwards
  largest/smallest <= delta. Unknown-label (-1) examples are neither counted nor repeated.
- Multi-task data is balanced on the first task; every example keeps all of its columns, so the
  other tasks' distributions move along with it.
- The balanced training list is shuffled with the seed. Each step draws from its own random stream
  named after the seed, the step and the class, so the outcome does not depend on input order or on
  which classes exist besides.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True, slots=True)  # slots: one per image, ~100 bytes less each
class Example:
    """One line of a list file: the image key (relative to the dataset) and a class id per task."""

    path: str
    labels: tuple[int, ...]

    def line(self) -> str:
        return " ".join([self.path, *(str(label) for label in self.labels)])


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]


@dataclass
class Balance:
    before: dict[int, int]  # training count per first-task class, natural
    after: dict[int, int]  # after capping and oversampling
    target: int  # the count every smaller class was raised to
    ratio_before: float
    ratio_after: float
    capped: dict[int, int] = field(default_factory=dict)  # class -> count it was undersampled to


def _rng(seed: int, *parts: object) -> random.Random:
    return random.Random("/".join([str(seed), *map(str, parts)]))


def share(n: int, fraction: float) -> int:
    """round(n * fraction) with halves rounded up (not to even)."""
    return math.floor(n * fraction + 0.5) if fraction > 0 else 0


def first_label(example: Example) -> int:
    return example.labels[0]


# Splitting and balancing take any items that sort like their Examples would, with `label_of` giving an
# item's first-task class id: ingest passes the index of each unique image (its images are in content
# order, which is the order of their keys), so that no Example object is made per image.


def stratified_split(examples: Iterable[Any], val_fraction: float, test_fraction: float, seed: int,
                     label_of: Callable[[Any], int] = first_label) -> Splits:
    strata: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        strata[label_of(example)].append(example)
    splits = Splits([], [], [])
    for label in sorted(strata):
        group = sorted(strata[label])
        _rng(seed, "split", label).shuffle(group)
        n = len(group)
        n_test, n_val = share(n, test_fraction), share(n, val_fraction)
        while n_test + n_val > n - 1 and (n_test or n_val):  # keep at least one image to train on
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        splits.test.extend(group[:n_test])
        splits.val.extend(group[n_test:n_test + n_val])
        splits.train.extend(group[n_test + n_val:])
    splits.val.sort()
    splits.test.sort()
    return splits


def ratio(counts: Iterable[int]) -> float:
    values = [c for c in counts if c > 0]
    return max(values) / min(values) if values else 1.0


def balance(train: Sequence[Any], max_ratio: float, seed: int, max_per_class: int = 0,
            label_of: Callable[[Any], int] = first_label) -> tuple[list[Any], Balance]:
    """The balanced, shuffled training stream and what was done to it."""
    if max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
    classes: dict[int, list[Example]] = defaultdict(list)
    unknown: list[Example] = []
    for example in train:
        first = label_of(example)
        (unknown if first < 0 else classes[first]).append(example)
    before = {label: len(group) for label, group in sorted(classes.items())}
    capped: dict[int, int] = {}
    if max_per_class:
        for label, group in classes.items():
            if len(group) > max_per_class:
                classes[label] = _rng(seed, "cap", label).sample(sorted(group), max_per_class)
                capped[label] = max_per_class
    largest = max((len(g) for g in classes.values()), default=0)
    target = math.ceil(largest / max_ratio) if largest else 0
    while target and largest / target > max_ratio:  # guard against float rounding in the division
        target += 1
    out: list[Example] = list(unknown)
    after: dict[int, int] = {}
    for label in sorted(classes):
        group = sorted(classes[label])
        if len(group) < target:
            repeats, remainder = divmod(target, len(group))
            group = group * repeats + _rng(seed, "oversample", label).sample(group, remainder)
        out.extend(group)
        after[label] = len(group)
    _rng(seed, "shuffle").shuffle(out)
    return out, Balance(before, after, target, ratio(before.values()), ratio(after.values()), capped)


def class_counts(examples: Iterable[Example], task: int = 0) -> Counter:
    return Counter(example.labels[task] for example in examples)
