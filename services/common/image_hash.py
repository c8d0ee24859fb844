"""The 64-bit difference hash (dHash) of an image, and the dataset file that carries it.

dHash: the image in greyscale shrunk to 9x8 (bilinear), one bit per horizontally adjacent pair, "is
the left pixel brighter", row by row, first bit the most significant. Re-encodings, resizes and small
crops of one image land within a few bits of each other (the evaluator's near-duplicate check).

Ingest computes it once per image while validating (services.ingest.validation) and writes
`datasets/<id>/hashes.tsv`; the tfrecords builder copies it into each Example (`image/dhash`); the
evaluator reads it from there and decodes an image itself (`dhash`) only for records without it.
Every path goes through `dhash_image`, so the hashes are the same bit for bit.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image

HASHES_FILE = "hashes.tsv"  # in a dataset: "<sha256 hex>\t<dhash, 16 hex digits>" per image, sorted
HASHES_CONTENT_TYPE = "text/tab-separated-values; charset=utf-8"
_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def dhash(encoded: bytes) -> int | None:
    """The 64-bit difference hash (0 <= h < 2**64) of an encoded image; None when it cannot be decoded."""
    try:
        return dhash_image(Image.open(io.BytesIO(encoded)))
    except _ERRORS:
        return None


def dhash_image(image: Image.Image) -> int:
    """The dHash of an opened image. Pass it before it is loaded: a JPEG is then decoded at a reduced
    scale (draft), much faster for big photos; a loaded JPEG would hash slightly differently. Formats
    without draft support (PNG, GIF, BMP, WebP) give the same hash loaded or not. Raises what Pillow
    raises for data it cannot decode."""
    image.draft("L", (64, 64))
    image.seek(0)
    grey = image if image.mode == "L" else image.convert("L")  # convert("L") of an "L" image is a copy
    small = np.frombuffer(grey.resize((9, 8), Image.Resampling.BILINEAR).tobytes(), dtype=np.uint8).reshape(8, 9)
    return int.from_bytes(np.packbits(small[:, :-1] > small[:, 1:]).tobytes(), "big")


def draft_changes_decoding(image: Image.Image) -> bool:
    """Whether dhash_image on this image, once loaded, would differ from dhash of its bytes (JPEG:
    draft decodes at a reduced scale, which only works before loading)."""
    return image.format in ("JPEG", "MPO")


def format_hashes(rows: Iterable[tuple[str, int | None]]) -> str:
    """hashes.tsv from (sha256, dhash) pairs; images without a hash are left out."""
    return "".join(hash_lines(rows))


def hash_lines(rows: Iterable[tuple[str, int | None]]) -> Iterator[str]:
    """hashes.tsv's lines, one at a time (for writing it without holding the whole text)."""
    return (hash_line(sha, value) for sha, value in sorted(r for r in rows if r[1] is not None))


def hash_line(sha: str, value: int) -> str:
    """One line of hashes.tsv (whose lines are sorted by sha256: a writer with rows in that order already
    writes them one by one, without hash_lines' sorted copy)."""
    return f"{sha}\t{value:016x}\n"


def parse_hashes(text: bytes | str, where: str = HASHES_FILE) -> dict[str, int]:
    """sha256 -> dhash from hashes.tsv; ValueError naming the line for anything malformed."""
    return dict(iter_hashes(text, where))


def iter_hashes(text: bytes | str | Iterable[bytes], where: str = HASHES_FILE) -> Iterator[tuple[str, int]]:
    """(sha256, dhash) per line of hashes.tsv (its text, or its lines as ObjectStore.iter_lines gives them),
    in file order, one line at a time (the records build keeps them compactly rather than in a dict);
    ValueError naming the line for anything malformed."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    lines = text.split("\n") if isinstance(text, str) else (line.decode("utf-8") for line in text)
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line:
            continue
        sha, sep, value = line.partition("\t")
        if not sep or len(sha) != 64 or len(value) != 16:
            raise ValueError(f"{where} line {number}: expected '<sha256>\\t<16 hex digits>', got {line[:120]!r}")
        try:
            int(sha, 16)
            dhash = int(value, 16)
        except ValueError:
            raise ValueError(f"{where} line {number}: not hexadecimal: {line[:120]!r}") from None
        yield sha, dhash
