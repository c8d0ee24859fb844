"""The evaluator's report for a fixed dataset and model against a golden file written by the evaluator
as it was before its per-image decoding changed (issue #18, item 5): a faster pass must say exactly
the same things (metrics, gallery, mislabels, duplicates, and the pixels of every image it wrote),
whether the examples carry their difference hash (records with image/dhash) or the evaluator hashes
the images itself (records made before).

Regenerate the golden only when a change of the outputs is intended:
    python -m tests.unit.test_evaluator_golden
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from services.common import image_hash
from services.common.storage import LocalObjectStore
from services.evaluator import blessing, engine, report
from services.evaluator.engine import Example, Options, evaluate
from services.evaluator.model import ServingModel
from services.evaluator.records import EvaluationRecords
from services.tfrecords.builder import RecordsBuilder
from tests.support.colour_model import colour_image, write_colour_model
from tests.support.sample_dataset import write_dataset

GOLDEN = Path(__file__).parent / "golden" / "evaluator_report.json"
CLASSES = ["red", "green", "blue"]
TASKS = [{"name": "label", "classes": CLASSES}]
IMAGE_FOLDERS = ("gallery", "mislabels", "duplicates")  # written from the images; plots/ are matplotlib's


def _encode(pixels: np.ndarray, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _example(data: bytes, label: int, name: str) -> Example:
    return Example(data, (label,), hashlib.sha256(data).hexdigest(), name)


def with_hashes(examples: list[Example]) -> list[Example]:
    """The examples as records with image/dhash give them: each carrying its hash."""
    return [e._replace(dhash=image_hash.dhash(e.encoded)) for e in examples]


def dataset() -> list[Example]:
    """PNG and JPEG images of every class, some labelled wrong, an exact duplicate with two labels,
    near duplicates (a re-encoding and a resize of one image) with different labels, and large JPEGs
    (the hash decodes those at a reduced scale)."""
    examples = [_example(colour_image(i % 3, 0.2 + 0.1 * (i % 7), seed=i), (i + (i % 9 == 0)) % 3, f"png{i}.png")
                for i in range(90)]
    examples += [_example(colour_image(i % 3, 0.5, size=160, seed=500 + i, fmt="JPEG"), i % 3, f"big{i}.jpg")
                 for i in range(12)]
    same = colour_image(1, 0.6, seed=300)
    examples += [_example(same, 1, "same_a.png"), _example(same, 0, "same_b.png")]
    pixels = np.asarray(Image.open(io.BytesIO(colour_image(2, 0.7, size=32, seed=400))).convert("RGB"))
    examples += [_example(_encode(pixels, "PNG"), 2, "near.png"),
                 _example(_encode(pixels, "JPEG", quality=95), 0, "near_reencoded.jpg"),
                 _example(_encode(np.asarray(Image.fromarray(pixels).resize((30, 30))), "PNG"), 1, "near_resized.png")]
    return examples


def run_report(out: Path, examples: Callable[[], Iterable[Example]] | None = None, tasks: list[dict] = TASKS) -> dict:
    """evaluation.json of one pass over `examples()` (default: dataset()), plus a digest of the pixels
    of every image artefact."""
    model = ServingModel(write_colour_model(out / "model" / "saved_model", CLASSES))
    examples = examples or partial(iter, dataset())
    report_dir = out / "report"
    result = evaluate(model, examples(), tasks, report_dir, Options(batch_size=16, gallery_per_cell=3,
                                                                    mislabel_top=10),
                      refetch=examples)
    document = {"job_id": "golden", "examples": result.examples, "tasks": result.tasks,
                "duplicates": result.duplicates, "cam_status": result.cam_status,
                "blessing": blessing.decide(result.tasks, None).to_json()}
    report.write(report_dir, document)
    written = json.loads((report_dir / report.EVALUATION_JSON).read_text())
    written["image_artefacts"] = {
        path.relative_to(report_dir).as_posix(): hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()
        for folder in IMAGE_FOLDERS for path in sorted((report_dir / folder).rglob("*.png"))}
    return written


def assert_same(actual, expected, where: str = "$") -> None:
    """Equal, except that floats may differ in the last bits (another CPU's float rounding)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), f"{where}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, int | float) and math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-9), \
            f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_the_report_matches_the_golden_written_before_the_evaluator_decoded_once(tmp_path):
    actual = run_report(tmp_path)
    expected = json.loads(GOLDEN.read_text())
    # the fixed dataset does exercise what the golden guards
    assert expected["image_artefacts"] and expected["tasks"][0]["mislabels"]["ranked"]
    assert {d["kind"] for d in expected["duplicates"]} == {"exact", "near"}
    assert_same(actual, expected)


def test_examples_that_carry_their_hash_give_the_golden_report_without_hashing_an_image(tmp_path, monkeypatch):
    examples = with_hashes(dataset())

    def no_decoding(encoded: bytes) -> int:
        raise AssertionError("the evaluator decoded an image to hash it although the example carries its hash")

    monkeypatch.setattr(engine.image_hash, "dhash", no_decoding)
    assert_same(run_report(tmp_path, partial(iter, examples)), json.loads(GOLDEN.read_text()))


def _records(root: Path, hashes: bool) -> EvaluationRecords:
    """The golden dataset as a prepared dataset (all of it the test split), with or without hashes.tsv,
    built into records by the records builder and read back as the evaluator reads them."""
    store = LocalObjectStore(root)
    items = [(e.encoded, e.labels) for e in dataset()]
    write_dataset(store, "golden", {"train": items[:6], "test": items}, [("label", CLASSES)], hashes=hashes)
    result = RecordsBuilder(workers=1).build(store, "golden")
    return EvaluationRecords(store, result.prefix, None, batch_size=16)


def test_records_with_and_without_image_dhash_give_the_same_report(tmp_path):
    hashed, unhashed = _records(tmp_path / "hashed", True), _records(tmp_path / "unhashed", False)
    assert [e.dhash for e in hashed.examples()] == [image_hash.dhash(e.encoded) for e in unhashed.examples()]
    assert {e.dhash for e in unhashed.examples()} == {None}
    with_dhash = run_report(tmp_path / "with", hashed.examples, hashed.tasks)
    without = run_report(tmp_path / "without", unhashed.examples, unhashed.tasks)
    assert {d["kind"] for d in with_dhash["duplicates"]} == {"exact", "near"} and with_dhash["image_artefacts"]
    assert with_dhash == without


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(run_report(Path(scratch)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
