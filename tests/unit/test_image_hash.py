"""The shared difference hash and hashes.tsv, the dataset file that carries it from ingest to the records."""

import io

import numpy as np
import pytest
from PIL import Image

from services.common import image_hash


def _jpeg(side: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def test_dhash_is_64_bits_and_none_for_what_does_not_decode():
    value = image_hash.dhash(_jpeg(80))
    assert value is not None and 0 <= value < 2**64
    assert image_hash.dhash(b"") is None and image_hash.dhash(b"\xff\xd8\xff garbage") is None


def test_dhash_image_of_an_unloaded_image_equals_dhash_of_its_bytes():
    data = _jpeg(640, seed=1)
    with Image.open(io.BytesIO(data)) as image:
        assert image_hash.draft_changes_decoding(image)
        assert image_hash.dhash_image(image) == image_hash.dhash(data)


def test_hashes_file_round_trip_sorted_and_without_unknown_hashes():
    rows = [("b" * 64, 2**64 - 1), ("a" * 64, 0), ("c" * 64, None)]
    text = image_hash.format_hashes(rows)
    assert text == f"{'a' * 64}\t{0:016x}\n{'b' * 64}\tffffffffffffffff\n"
    assert image_hash.parse_hashes(text.encode()) == {"a" * 64: 0, "b" * 64: 2**64 - 1}
    assert image_hash.parse_hashes("") == {}


@pytest.mark.parametrize("line", ["abc\t0000000000000000", f"{'a' * 64} 0000000000000000",
                                  f"{'a' * 64}\t00000000000000zz", f"{'g' * 64}\t0000000000000000"])
def test_a_malformed_hashes_file_names_its_line(line):
    with pytest.raises(ValueError, match="hashes.tsv line 2"):
        image_hash.parse_hashes(f"{'a' * 64}\t0000000000000001\n{line}\n")
