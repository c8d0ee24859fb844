"""The mislabel review file, `mislabels.csv`: written by the evaluator beside every report, edited by a
person (the `decision` column), read back by `classforge dataset relabel`. Its columns live here once so
the writer and the reader cannot drift apart.

Columns: image_id (sha256 of the image bytes, the name of the image in the dataset), path (its key in
the dataset, `images/ab/<sha256>.png`), task, given_label, predicted_label, confidence (the model's
probability of predicted_label), score (confidence minus the probability of given_label: how much more
the model believes its own answer than the label, 0..1; highest first), decision.

Decisions: empty or `keep` (the label stays), `drop` (the image leaves the dataset), `relabel:<class>`
(the image gets that class of the row's task).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

FILE_NAME = "mislabels.csv"
COLUMNS = ("image_id", "path", "task", "given_label", "predicted_label", "confidence", "score", "decision")
REQUIRED_COLUMNS = ("image_id", "decision")
KEEP, DROP, RELABEL_PREFIX = "keep", "drop", "relabel:"


def write(path: Path, rows: Iterable[dict]) -> int:
    """Writes the review file (rows as dicts with COLUMNS keys, decision left empty); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "decision": row.get("decision", "")})
            count += 1
    return count


def read(text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header columns, [(line number, row)]): line numbers count the header as line 1, so they match
    what an editor shows. Blank lines are skipped. Values are stripped of surrounding blanks."""
    reader = csv.reader(io.StringIO(text))
    header: list[str] = []
    rows: list[tuple[int, dict]] = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        if not header:
            header = [v.strip().lstrip("\ufeff") for v in values]
            continue
        row = {name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(header)}
        if len(values) > len(header):
            row["__extra__"] = values[len(header):]
        rows.append((reader.line_num, row))
    return header, rows
