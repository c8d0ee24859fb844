"""Image validation on real crafted bytes: every accepted format and mode, every kind of bad input."""

import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.common import image_hash
from services.ingest.validation import ImageCheck, ValidationPool, check_bytes, check_path, check_paths, reason_code


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(mode: str = "RGB", size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose pixel data is a few bytes: decoding it fails,
    so a reason other than `corrupt` proves the header was judged before any decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize(("fmt", "mode", "ext"), [
    ("JPEG", "RGB", "jpg"), ("JPEG", "L", "jpg"), ("JPEG", "CMYK", "jpg"),
    ("PNG", "RGB", "png"), ("PNG", "RGBA", "png"), ("PNG", "L", "png"),
    ("BMP", "RGB", "bmp"), ("WEBP", "RGB", "webp"), ("WEBP", "RGBA", "webp"),
])
def test_accepted_formats_and_modes_decode_and_record_what_they_are(fmt, mode, ext):
    data = encode(noise(mode), fmt)
    check = check_bytes(data)
    assert check.ok, check.reason
    assert (check.format, check.ext, check.mode) == (fmt, ext, mode)
    assert (check.width, check.height) == (64, 48)
    assert check.sha256 == hashlib.sha256(data).hexdigest() and check.size == len(data)
    assert check.dhash is not None and check.dhash == image_hash.dhash(data)  # the evaluator's hash, bit for bit


def _animated_gif() -> bytes:
    frames = [noise("RGB", seed=s).convert("P") for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


@pytest.mark.parametrize("data", [
    pytest.param(encode(noise("RGB", size=(1200, 900), seed=3), "JPEG", quality=90), id="big JPEG, drafted"),
    pytest.param(encode(noise("RGB").convert("P"), "PNG", transparency=0), id="palette PNG"),
    pytest.param(encode(noise("RGB").convert("LA"), "PNG"), id="LA PNG"),
    pytest.param(encode(noise("L").convert("I;16"), "PNG"), id="16-bit PNG"),
    pytest.param(encode(noise("RGB").convert("1"), "BMP"), id="1-bit BMP"),
    pytest.param(encode(noise("RGB").convert("P"), "GIF"), id="GIF"),
    pytest.param(_animated_gif(), id="animated GIF"),
])
def test_the_hash_of_a_validated_image_equals_the_hash_of_its_bytes(data):
    check = check_bytes(data)
    assert check.ok, check.reason
    assert check.dhash is not None and check.dhash == image_hash.dhash(data)


def test_rejected_files_have_no_hash():
    assert check_bytes(b"").dhash is None and check_bytes(b"not an image").dhash is None
    assert check_bytes(encode(noise(), "PNG")[:60]).dhash is None


def test_palette_png_with_transparency_is_accepted():
    image = noise("RGB").convert("P")
    data = encode(image, "PNG", transparency=0)
    check = check_bytes(data)
    assert check.ok and check.mode == "P"


def test_animated_gif_is_accepted_on_its_first_frame():
    check = check_bytes(_animated_gif())
    assert check.ok, check.reason
    assert (check.format, check.ext, check.width, check.height) == ("GIF", "gif", 64, 48)


def test_zero_byte_file_is_rejected(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    check = check_path(tmp_path / "empty.png")
    assert reason_code(check.reason) == "empty-file" and not check.ok


def test_text_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are my holiday notes, not a photo\n")
    check = check_path(path)
    assert reason_code(check.reason) == "not-an-image"
    assert check.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_other_image_formats_are_not_accepted():
    assert reason_code(check_bytes(encode(noise(), "TIFF")).reason) == "not-an-image"
    assert reason_code(check_bytes(encode(noise(), "PPM")).reason) == "not-an-image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_corrupt(fmt):
    data = encode(noise(size=(128, 128)), fmt)
    assert check_bytes(data).ok
    check = check_bytes(data[: len(data) * 6 // 10])
    assert reason_code(check.reason) == "corrupt", check.reason


def test_damaged_png_data_is_corrupt():
    data = bytearray(encode(noise(size=(128, 128)), "PNG"))
    start = data.index(b"IDAT") + 200
    data[start:start + 400] = bytes(400)
    check = check_bytes(bytes(data))
    assert reason_code(check.reason) == "corrupt", check.reason


def test_a_bomb_sized_header_is_rejected_before_decoding():
    check = check_bytes(png_with_header(100_000, 100_000))  # 10^10 pixels: Pillow itself refuses
    assert reason_code(check.reason) == "too-many-pixels", check.reason
    check = check_bytes(png_with_header(5_000, 5_000), max_pixels=1_000_000)  # our own, lower bound
    assert reason_code(check.reason) == "too-many-pixels", check.reason
    assert "25000000 pixels" in check.reason and (check.width, check.height) == (5000, 5000)
    # the same file under the limit is decoded, and its missing pixel data found
    assert reason_code(check_bytes(png_with_header(5_000, 5_000)).reason) == "corrupt"


def test_minimum_side_is_enforced():
    data = encode(noise(size=(31, 40)), "PNG")
    assert reason_code(check_bytes(data, min_side=32).reason) == "too-small"
    assert check_bytes(data, min_side=31).ok


def test_unreadable_and_oversized_files(tmp_path):
    assert reason_code(check_path(tmp_path / "missing.png").reason) == "unreadable"
    path = tmp_path / "big.png"
    path.write_bytes(encode(noise(size=(128, 128)), "PNG"))
    check = check_path(path, max_bytes=1000)
    assert reason_code(check.reason) == "too-large" and check.size == path.stat().st_size


def test_the_process_pool_gives_the_same_answers_in_the_same_order(tmp_path):
    paths = []
    for i in range(40):
        path = tmp_path / f"{i:02d}.png"
        data = encode(noise(size=(16 + i, 16), seed=i), "PNG")
        path.write_bytes(data if i % 7 else data[:30])  # every 7th truncated
        paths.append(path)
    serial = check_paths(paths, workers=1)
    pooled = check_paths(paths, workers=2, pool_threshold=1, context="fork")
    assert pooled == serial
    assert all(c.dhash is not None for c in serial if c.ok)  # the hash comes back from the workers
    assert [c.width for c in serial if c.ok] == [16 + i for i in range(40) if i % 7]
    assert sum(not c.ok for c in serial) == 6


def test_validation_pool_keeps_the_order_of_batches_added_while_walking(tmp_path):
    paths = []
    for i in range(30):
        path = tmp_path / f"{i:02d}.png"
        path.write_bytes(encode(noise(size=(8 + i, 8), seed=i), "PNG"))
        paths.append(str(path))
    with ValidationPool(workers=2, pool_threshold=4, chunk_files=3, context="fork") as pool:
        for start in range(0, 30, 7):
            pool.add(paths[start:start + 7])
        results = pool.results()
    assert [r.width for r in results] == [8 + i for i in range(30)]
    assert all(isinstance(r, ImageCheck) and r.ok for r in results)


def test_forkserver_workers_for_processes_with_threads(tmp_path):
    """Services run threads (gRPC, Kafka), so the pool forks its workers from a clean forkserver."""
    paths = []
    for i in range(12):
        path = tmp_path / f"{i:02d}.png"
        path.write_bytes(encode(noise(size=(10 + i, 10), seed=i), "PNG") if i != 5 else b"")
        paths.append(path)
    results = check_paths(paths, workers=2, pool_threshold=1, context="forkserver")
    assert [r.width for r in results] == [0 if i == 5 else 10 + i for i in range(12)]
    assert reason_code(results[5].reason) == "empty-file"


def test_a_fifo_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    check = check_path(tmp_path / "pipe.png")  # returns at once instead of waiting for a writer
    assert reason_code(check.reason) == "unreadable" and "not a regular file" in check.reason


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 300_000])
def test_files_of_every_size_are_read_whole(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    check = check_path(tmp_path / "f.bin")
    assert check.size == size and check.sha256 == hashlib.sha256(data).hexdigest()
    assert reason_code(check_path(tmp_path / "f.bin", max_bytes=max(size - 1, 0)).reason) == (
        "too-large" if size else "empty-file")
