"""The error gallery: for every (true, predicted) pair of classes, up to N evaluation images copied
under `gallery/<true>/<predicted>/` (single-task models; `gallery/<task>/<true>/<predicted>/` with
several tasks) as PNG, named `<probability>_<source_id[:12]>.png`, where the probability is the
model's probability of the predicted class. The diagonal folders (<c>/<c>) hold correct predictions.

Which N: the most confident predictions of the cell, so a wrong cell starts with the errors the
model was surest about, the ones most worth a look (and most often a wrong label)."""

from __future__ import annotations

from pathlib import Path

from services.evaluator.images import save_png
from services.evaluator.samples import Sample, TopN

DEFAULT_PER_CELL = 16


class GallerySelector:
    """Keeps up to `per_cell` samples per (true, predicted) cell while streaming."""

    def __init__(self, per_cell: int = DEFAULT_PER_CELL):
        self.per_cell = per_cell
        self.cells: dict[tuple[int, int], TopN[Sample]] = {}

    def would_keep(self, true: int, predicted: int, probability: float) -> bool:
        cell = self.cells.get((true, predicted))
        return self.per_cell > 0 and (cell is None or cell.would_keep(probability))

    def offer(self, sample: Sample) -> None:
        cell = self.cells.setdefault((sample.true, sample.predicted), TopN(self.per_cell))
        cell.offer(sample.probability, sample)


def file_name(sample: Sample) -> str:
    ident = (sample.source_id or f"index{sample.index}")[:12]
    return f"{sample.probability:.3f}_{ident}.png"


def write(root: Path, selector: GallerySelector, folders: list[str]) -> list[dict]:
    """Writes the gallery under `root` (the gallery/ folder, or gallery/<task>/); `folders` are the
    per-class folder names (images.safe_names). Returns one entry per file, paths relative to root."""
    written = []
    for (true, predicted), cell in sorted(selector.cells.items()):
        for sample in cell.items():
            relative = Path(folders[true]) / folders[predicted] / file_name(sample)
            save_png(sample.encoded, root / relative)
            written.append({"true": true, "predicted": predicted, "path": relative.as_posix(),
                            "probability": sample.probability, "source_id": sample.source_id,
                            "filename": sample.filename})
    return written
