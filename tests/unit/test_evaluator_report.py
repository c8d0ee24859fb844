"""One evaluation pass with the tiny contract-following SavedModel: gallery cells, suspected
mislabels, conflicting duplicates and an index.html that opens offline."""

import hashlib
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common import image_hash
from services.evaluator import blessing, mislabels, report
from services.evaluator.engine import Example, Options, evaluate
from services.evaluator.model import ServingModel
from tests.support.colour_model import colour_image, write_colour_model

CLASSES = ["red", "green", "blue"]
TASKS = [{"name": "label", "classes": CLASSES}]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ServingModel(write_colour_model(tmp_path_factory.mktemp("model") / "saved_model", CLASSES))


def example(channel: int, label: int, seed: int, strength: float = 0.8) -> Example:
    data = colour_image(channel, strength, seed=seed)
    return Example(data, (label,), hashlib.sha256(data).hexdigest(), f"img{seed}.png")


@pytest.fixture(scope="module")
def evaluated(model, tmp_path_factory):
    examples = [example(i % 3, i % 3, seed=i, strength=0.3 + 0.1 * (i % 5)) for i in range(60)]
    examples += [example(0, 2, seed=100), example(0, 2, seed=101)]  # red images labelled blue
    examples += [example(1, 1, seed=200), example(1, 0, seed=200)]  # the same image labelled green and red
    out = tmp_path_factory.mktemp("report")
    result = evaluate(model, examples, TASKS, out, Options(batch_size=8, gallery_per_cell=4),
                      refetch=lambda: iter(examples))
    decision = blessing.decide(result.tasks, None)
    document = {"job_id": "job-1", "tasks": result.tasks, "duplicates": result.duplicates,
                "blessing": decision.to_json(), "examples": result.examples, "cam_status": result.cam_status}
    history = [{"epoch": e, "stage": 2, "loss": 1 / (e + 1), "regularization_loss": 0.1, "accuracy": 0.5 + e / 10}
               for e in range(3)]
    report.write(out, document, history)
    return out, result, examples


def test_gallery_files_land_in_their_cells_with_the_probability_in_the_name(evaluated, model):
    out, result, examples = evaluated
    entries = result.tasks[0]["gallery"]
    by_source = {(e.source_id, e.labels[0]): e for e in examples}  # one image appears with two labels
    for entry in entries:
        path = out / entry["path"]
        assert path.is_file()
        true_name, predicted_name, name = path.relative_to(out / "gallery").parts
        assert (true_name, predicted_name) == (CLASSES[entry["true"]], CLASSES[entry["predicted"]])
        probability, ident = re.fullmatch(r"(\d\.\d{3})_([0-9a-f]{12})\.png", name).groups()
        source = by_source[(entry["source_id"], entry["true"])]
        assert ident == entry["source_id"][:12]
        probs, ids = model([source.encoded])["label"]
        assert int(ids[0]) == entry["predicted"] and float(probability) == pytest.approx(probs[0].max(), abs=5e-4)
    cells = {(e["true"], e["predicted"]) for e in entries}
    assert (2, 0) in cells and (0, 1) in cells  # red images labelled blue; the duplicate labelled red
    assert all(sum(1 for e in entries if (e["true"], e["predicted"]) == c) <= 4 for c in cells)
    assert len(list((out / "gallery" / "red" / "red").iterdir())) == 4  # capped at gallery_per_cell


def test_suspected_mislabels_rank_confident_mistakes_and_find_conflicting_duplicates(evaluated):
    out, result, _ = evaluated
    ranked = result.tasks[0]["mislabels"]["ranked"]
    assert len(ranked) == 3 and ranked[0]["rank"] == 1
    assert [m["probability"] for m in ranked] == sorted((m["probability"] for m in ranked), reverse=True)
    assert {(m["true"], m["predicted"]) for m in ranked} == {("blue", "red"), ("red", "green")}
    assert all((out / m["thumbnail"]).is_file() for m in ranked)
    exact = [d for d in result.duplicates if d["kind"] == "exact"]
    assert len(exact) == 1 and {exact[0]["a"]["labels"]["label"], exact[0]["b"]["labels"]["label"]} == {"green", "red"}
    assert (out / exact[0]["a"]["thumbnail"]).is_file()


def test_near_duplicates_by_difference_hash():
    rng = np.random.default_rng(3)
    def texture():
        coarse = rng.uniform(0, 255, (8, 8)).astype(np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((64, 64), Image.Resampling.BICUBIC))
    base, other = texture(), texture()
    def png(pixels, fmt="PNG"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, quality=70)
        return buffer.getvalue()
    a, b, c = png(base), png(base, "JPEG"), png(other)  # b: base re-encoded as JPEG; c: another image
    hashes = [image_hash.dhash(x) for x in (a, b, c)] + [None]
    assert bin(hashes[0] ^ hashes[1]).count("1") <= 4 < bin(hashes[0] ^ hashes[2]).count("1")
    labels = np.array([[0], [1], [1], [0]])
    found = mislabels.conflicting_duplicates(["x", "y", "z", "w"], hashes, labels)
    assert [(c.kind, c.a, c.b) for c in found] == [("near", 0, 1)]
    # the same labels are no conflict, an unknown label neither
    assert mislabels.conflicting_duplicates(["x", "y"], hashes[:2], np.array([[1], [1]])) == []
    assert mislabels.conflicting_duplicates(["x", "y"], hashes[:2], np.array([[1], [-1]])) == []


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("href", "src"):
                self.links.append(value)


def test_index_html_is_offline_and_every_link_exists(evaluated):
    out, _, _ = evaluated
    text = (out / "index.html").read_text()
    assert not re.search(r"https?://", text)
    parser = _Links()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert len(parser.links) > 20
    for link in parser.links:
        assert not link.startswith(("/", "file:", "//")), link
        assert (out / link).is_file(), link
    for name in ("confusion_matrix", "confusion_matrix_normalised", "per_class", "reliability", "training_curves"):
        assert f"plots/{name}.png" in parser.links
    document = json.loads((out / "evaluation.json").read_text())
    assert document["tasks"][0]["confusion_matrix"]["axes"].startswith("rows = ground truth")
    assert document["plots"]["training_curves"] == "plots/training_curves.png"


def test_the_contract_is_enforced(tmp_path):
    from services.common.errors import FailedPrecondition
    from services.evaluator.engine import match_tasks

    model = ServingModel(write_colour_model(tmp_path / "m", CLASSES))
    with pytest.raises(FailedPrecondition, match="differ from the model's"):
        match_tasks(model, [{"name": "label", "classes": ["blue", "green", "red"]}])
    with pytest.raises(FailedPrecondition, match="no labels for the model's task"):
        match_tasks(model, [{"name": "colour", "classes": CLASSES}])
    with pytest.raises(FailedPrecondition, match="not a loadable SavedModel"):
        ServingModel(Path(tmp_path / "nothing"))
