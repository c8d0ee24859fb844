"""Ingest's compact per-image state (#19 item 4): the candidate and check lists give back exactly what
was put in, and hold a small, bounded number of bytes per image, so that ingest's memory stays flat
as the data grows (bench.scale measures the whole stage)."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from bench.scale import _png
from services.ingest.compact import Candidate, CandidateList, TextColumn
from services.ingest.validation import CheckList, ImageCheck, ValidationPool, check_paths


def test_candidates_come_back_as_added_whatever_their_paths():
    added = [Candidate("/data/src/cats/a.png", "cats/a.png", ("cats",)),
             Candidate("/elsewhere/real-target.png", "cats/link.png", ("cats",)),  # a followed link
             Candidate("/data/src/dogs/\udcff.png", "dogs/\udcff.png", ("dogs",)),  # not UTF-8: escaped
             Candidate("/data/src/x", "", (None, "b"))]
    candidates = CandidateList(added)
    assert list(candidates) == added and candidates == added and len(candidates) == 4
    assert candidates[-2] == added[-2] and candidates[1:3] == added[1:3]
    assert candidates.path(1) == "/elsewhere/real-target.png" and candidates.name(2) == "dogs/\udcff.png"
    candidates.clear()
    assert len(candidates) == 0
    with pytest.raises(IndexError):
        candidates[0]


def test_checks_come_back_as_added_rejects_included():
    sha = hashlib.sha256(b"x").hexdigest()
    added = [ImageCheck(sha, 10, "PNG", 28, 30, "RGB", "", 0),  # a dhash of 0 is a hash, not None
             ImageCheck(sha, 11, "JPEG", 1, 2**31, "L", "", None),
             ImageCheck("", 0, reason="unreadable: gone"),
             ImageCheck(sha, 12, "PNG", 5, 5, "RGBA", "", (1 << 64) - 1)]
    checks = CheckList(added)
    assert list(checks) == added
    assert [checks.ok(i) for i in range(4)] == [True, True, False, True]
    assert checks.digest(0) == bytes.fromhex(sha) and checks.format(1) == "JPEG" and checks.dhash(1) is None
    assert checks.dhash(3) == (1 << 64) - 1 and checks.size(2) == 0 and checks.format(2) == ""


def test_the_pool_returns_its_outcomes_in_order_as_a_check_list(tmp_path):
    paths = []
    for n in range(40):
        path = tmp_path / f"{n}.png"
        path.write_bytes(b"not an image %d" % n if n % 7 == 0 else _png(8 + n % 5, bytes([n]) * (8 + n % 5) ** 2 * 3))
        paths.append(str(path))
    with ValidationPool(workers=2, pool_threshold=1, chunk_files=4, context="fork") as pool:
        for start in range(0, 40, 5):
            pool.add(paths[start:start + 5])
        results = pool.results()
    assert isinstance(results, CheckList)
    assert results == check_paths(paths, workers=1)  # the same outcomes, in the order added
    assert [r.ok for r in results] == [n % 7 != 0 for n in range(40)]
    assert [r.width for r in results] == [0 if n % 7 == 0 else 8 + n % 5 for n in range(40)]


def test_per_image_state_stays_under_150_bytes_an_image():
    """20,000 candidates with their checks, as the folder walk and validation leave them: ~100 bytes an
    image (the name's bytes included); as tuples of strings and ints they took ~600."""
    count = 20_000
    tracemalloc.start()
    try:
        candidates, checks = CandidateList(), CheckList()
        for n in range(count):
            name = f"class-{n % 10}/{n:07d}.png"
            candidates.append(Candidate(f"/tmp/classforge-scale-350000-abcdefgh/source/{name}", name,
                                        (f"class-{n % 10}",)))
            checks.append(ImageCheck(hashlib.sha256(n.to_bytes(4, "big")).hexdigest(), 2400 + n % 50, "PNG",
                                     28, 28, "RGB", "", n * 7919))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / count < 150, f"{held / count:.0f} bytes an image"


def test_a_text_column_holds_any_str():
    column = TextColumn()
    for text in ("", "plain", "ü/\udc80", "a" * 1000):
        column.append(text)
    assert [column[i] for i in range(len(column))] == ["", "plain", "ü/\udc80", "a" * 1000]
