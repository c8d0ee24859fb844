"""Properties of splitting and balancing, checked over many random datasets (fixed seeds, so a failure
reproduces): the ratio bound holds, validation/test are untouched and natural, no image sits in two
splits, the same seed gives the same lists, multi-task lists keep their columns."""

import math
import random
from collections import Counter

import pytest

from services.ingest.balance import Example, balance, class_counts, share, stratified_split


def make_dataset(rng: random.Random, tasks: int = 1, unknown: int = 0) -> list[Example]:
    sizes = [rng.choice([1, 2, 3, 5, rng.randint(1, 40), rng.randint(50, 400)]) for _ in range(rng.randint(2, 8))]
    examples = []
    for label, size in enumerate(sizes):
        for i in range(size):
            extra = tuple(rng.randint(-1, 3) for _ in range(tasks - 1))
            examples.append(Example(f"images/{label:02d}/{i:04d}.png", (label, *extra)))
    for i in range(unknown):
        examples.append(Example(f"images/unknown/{i:04d}.png", (-1, *(rng.randint(0, 2) for _ in range(tasks - 1)))))
    rng.shuffle(examples)
    return examples


CASES = range(150)


@pytest.mark.parametrize("case", CASES)
def test_split_and_balance_properties(case):
    rng = random.Random(case)
    examples = make_dataset(rng, tasks=rng.choice([1, 1, 3]), unknown=rng.choice([0, 0, 7]))
    delta = rng.choice([1.0, 1.5, 2.0, 5.0, 10.0])
    val_fraction, test_fraction = rng.choice([(0.1, 0.0), (0.2, 0.1), (0.0, 0.0), (0.5, 0.3)])
    cap = rng.choice([0, 0, 30])
    seed = rng.randint(0, 10**6)

    splits = stratified_split(examples, val_fraction, test_fraction, seed)
    train, done = balance(splits.train, delta, seed, cap)

    # no image in two splits, none lost
    train_set, val_set, test_set = set(splits.train), set(splits.val), set(splits.test)
    assert not (train_set & val_set) and not (train_set & test_set) and not (val_set & test_set)
    assert train_set | val_set | test_set == set(examples)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(examples)

    # stratified, natural validation/test: each class cut at round(n * fraction), at least one to train
    total = class_counts(examples)
    for label, n in total.items():
        n_test, n_val = share(n, test_fraction), share(n, val_fraction)
        while n_test + n_val > n - 1 and (n_test or n_val):
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        assert class_counts(splits.test)[label] == n_test
        assert class_counts(splits.val)[label] == n_val
        assert class_counts(splits.train)[label] == n - n_test - n_val >= 1

    # the ratio bound holds after balancing (known first-task labels), and only train changed
    after = Counter(e.labels[0] for e in train if e.labels[0] >= 0)
    assert max(after.values()) / min(after.values()) <= delta + 1e-9, (after, delta)
    assert dict(sorted(after.items())) == done.after
    assert set(train) <= train_set  # oversampling repeats training images only
    natural = class_counts(splits.train)
    for label, n in natural.items():
        if label < 0:
            assert after.get(label, 0) == 0 and Counter(e.labels[0] for e in train)[-1] == n  # kept, not repeated
            continue
        expected = min(n, cap) if cap else n
        expected = max(expected, done.target)
        assert after[label] == expected
        if not cap or n <= cap:
            assert {e for e in train if e.labels[0] == label} == {e for e in splits.train if e.labels[0] == label}
    assert done.target == (math.ceil(max(min(n, cap) if cap else n for k, n in natural.items() if k >= 0) / delta))

    # multi-task columns are kept: every line is one of the original examples, labels untouched
    originals = {e.path: e.labels for e in examples}
    assert all(originals[e.path] == e.labels for e in train + splits.val + splits.test)

    # same seed -> same lists; the lists are a function of the set, not of the input order
    again = list(examples)
    random.Random(case + 1000).shuffle(again)
    splits2 = stratified_split(again, val_fraction, test_fraction, seed)
    train2, _ = balance(splits2.train, delta, seed, cap)
    assert (train2, splits2.val, splits2.test) == (train, splits.val, splits.test)


def test_a_different_seed_gives_different_lists_and_training_is_shuffled():
    examples = make_dataset(random.Random(3))
    a = stratified_split(examples, 0.2, 0.1, seed=1)
    b = stratified_split(examples, 0.2, 0.1, seed=2)
    assert a.val != b.val
    train, _ = balance(a.train, 2.0, seed=1)
    labels = [e.labels[0] for e in train]
    assert labels != sorted(labels)  # not grouped by class
    changes = sum(x != y for x, y in zip(labels, labels[1:], strict=False))
    assert changes > len(labels) // 4


def test_oversampling_repeats_minority_images_evenly():
    train = [Example(f"a{i}", (0,)) for i in range(100)] + [Example(f"b{i}", (1,)) for i in range(3)]
    balanced, done = balance(train, 5.0, seed=0)
    counts = Counter(e.path for e in balanced if e.labels[0] == 1)
    assert done.target == 20 and sum(counts.values()) == 20
    assert sorted(counts.values()) == [6, 7, 7]  # 6 whole repeats + 2 of the 3 once more
    assert done.ratio_before == pytest.approx(100 / 3) and done.ratio_after == pytest.approx(5.0)


def test_cap_undersamples_the_majority_before_the_bound_applies():
    train = [Example(f"a{i}", (0,)) for i in range(500)] + [Example(f"b{i}", (1,)) for i in range(10)]
    balanced, done = balance(train, 5.0, seed=4, max_per_class=100)
    counts = Counter(e.labels[0] for e in balanced)
    assert counts == {0: 100, 1: 20} and done.capped == {0: 100}
    assert len({e.path for e in balanced if e.labels[0] == 0}) == 100  # a sample, without repeats


def test_a_single_image_class_stays_in_training():
    examples = [Example(f"a{i}", (0,)) for i in range(50)] + [Example("b0", (1,))]
    splits = stratified_split(examples, 0.1, 0.1, seed=0)
    assert Example("b0", (1,)) in splits.train
    assert class_counts(splits.val)[0] == 5 and class_counts(splits.test)[0] == 5


def test_list_line_format():
    assert Example("images/ab/ab12.png", (3, -1, 0)).line() == "images/ab/ab12.png 3 -1 0"
