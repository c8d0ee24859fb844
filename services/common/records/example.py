"""The records' wire formats, written without TensorFlow: `tf.train.Example` encoding, TFRecord
framing and image header sniffing.

The builder's worker processes use only this module (plus PIL when re-encoding), so they start in
milliseconds and spend their time on the data, not on importing TensorFlow. What is written here is
exactly what `tf.train.Example.SerializeToString()` and `tf.io.TFRecordWriter` would produce for the
same values (tests/unit/test_tfrecords_example.py checks it against TensorFlow's own parsers).

One Example per list entry, with these features (the contract with the reader, trainer, evaluator):

| key | type | value |
|---|---|---|
| `image/encoded` | bytes | the image file's bytes (original, or re-encoded JPEG) |
| `image/format` | bytes | `jpeg`, `png`, `gif`, `bmp` or `webp` |
| `image/height`, `image/width` | int64 | pixels |
| `image/filename` | bytes | the image's key in the dataset (`images/ab/<sha256>.png`) |
| `image/source_id` | bytes | the sha256 of the original image bytes (hex) |
| `image/class/label` | int64 × tasks | class id per task, -1 where unknown |
| `image/class/text` | bytes × tasks | class name per task, empty where unknown |
| `image/dhash` | int64, optional | the original image's 64-bit difference hash (see below) |

`image/dhash` is services.common.image_hash.dhash(`image/encoded`), stored as int64 two's complement
(a hash >= 2^63 reads back negative): the hash ingest computed (the dataset's `hashes.tsv`) when the
original bytes are stored, the builder's own when it re-encodes. Records of datasets made before ingest
wrote hashes.tsv lack it (unless re-encoded); readers then hash `image/encoded` themselves.

TFRecord framing of one record: `uint64 length (LE) | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)`, with masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import google_crc32c

from services.common.image_headers import declared_size, sniff_format

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
LABEL = "image/class/label"
TEXT = "image/class/text"
DHASH = "image/dhash"
FEATURE_KEYS = (ENCODED, FORMAT, HEIGHT, WIDTH, FILENAME, SOURCE_ID, LABEL, TEXT)  # always present
OPTIONAL_FEATURE_KEYS = (DHASH,)

UNKNOWN = -1  # class id of a task whose label is not known for this image

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


class RecordError(ValueError):
    """A TFRecord file is truncated or a checksum does not match."""


# --------------------------------------------------------------------------- TFRecord framing


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def frame(record: bytes) -> bytes:
    """One record as it sits in a .tfrecord file."""
    length = struct.pack("<Q", len(record))
    return b"".join((length, struct.pack("<I", masked_crc(length)), record, struct.pack("<I", masked_crc(record))))


def iter_records(stream: BinaryIO, *, verify: bool = True) -> Iterator[bytes]:
    """The records of a .tfrecord stream, checking both checksums of each (tools and tests; training
    reads through tf.data)."""
    while header := stream.read(12):
        if len(header) < 12:
            raise RecordError("truncated record header")
        (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        if verify and masked_crc(header[:8]) != length_crc:
            raise RecordError("record length checksum mismatch")
        body = stream.read(length + 4)
        if len(body) < length + 4:
            raise RecordError("truncated record")
        data = body[:length]
        if verify and masked_crc(data) != struct.unpack("<I", body[length:])[0]:
            raise RecordError("record data checksum mismatch")
        yield data


# --------------------------------------------------------------------------- protobuf wire format


def _varint(value: int) -> bytes:
    value &= _U64  # negative int64 values are ten-byte two's complement varints, as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
    # Feature.bytes_list (1) -> BytesList.value (1), repeated
    return _field(1, b"".join(_field(1, v) for v in values))


def _int64_feature(values: Sequence[int]) -> bytes:
    # Feature.int64_list (3) -> Int64List.value (1), packed as protobuf writes proto3 repeated scalars
    packed = b"".join(_varint(v) for v in values)
    return _field(3, _field(1, packed) if values else b"")


def _entry(key: str, feature: bytes) -> bytes:
    # Features.feature (1) is a map<string, Feature>: each entry a message {key = 1; value = 2}
    return _field(1, _field(1, key.encode()) + _field(2, feature))


_SMALL_VARINTS = [_varint(n) for n in range(1 << 14)]  # one or two bytes: most lengths


def _len(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else _varint(n)


def _key_part(key: str) -> bytes:
    return _field(1, key.encode())


_ENCODED_KEY, _FILENAME_KEY, _SOURCE_ID_KEY = _key_part(ENCODED), _key_part(FILENAME), _key_part(SOURCE_ID)


def _bytes_entry(parts: list[bytes], key_part: bytes, value: bytes) -> int:
    """Appends the map entry {key, Feature{bytes_list{value}}} to `parts` (the fast path of
    _entry(key, _bytes_feature([value])), without intermediate copies of the value); returns its size."""
    n = len(value)
    v1 = _len(n)
    bytes_list = 1 + len(v1) + n  # BytesList: 0x0a len value
    v2 = _len(bytes_list)
    feature = 1 + len(v2) + bytes_list  # Feature: 0x0a len BytesList
    v3 = _len(feature)
    body = len(key_part) + 1 + len(v3) + feature  # entry: key, 0x12 len Feature
    v4 = _len(body)
    parts += (b"\x0a", v4, key_part, b"\x12", v3, b"\x0a", v2, b"\x0a", v1, value)
    return 1 + len(v4) + body


class ExampleEncoder:
    """Builds serialized Examples fast: the parts that repeat (format, small ints, a label tuple and
    its class names) are encoded once and reused. Not thread-safe (unbounded caches are per encoder,
    bounded in practice by the distinct formats, sizes and label combinations of one dataset)."""

    def __init__(self, class_names: Sequence[Sequence[str]]):
        self._class_names = [list(names) for names in class_names]
        self._formats: dict[str, bytes] = {}
        self._ints: dict[tuple[str, int], bytes] = {}
        self._labels: dict[tuple[int, ...], bytes] = {}

    def encode(self, *, encoded: bytes, image_format: str, height: int, width: int, filename: str,
               source_id: str, labels: tuple[int, ...], dhash: int | None = None) -> bytes:
        """One serialized Example; `dhash` (0 <= dhash < 2**64) adds image/dhash, None leaves it out."""
        fmt = self._formats.get(image_format)
        if fmt is None:
            fmt = self._formats[image_format] = _entry(FORMAT, _bytes_feature([image_format.encode()]))
        label_part = self._labels.get(labels)
        if label_part is None:
            label_part = self._labels[labels] = self._label_entries(labels)
        parts: list[bytes] = []
        size = (_bytes_entry(parts, _ENCODED_KEY, encoded) + _bytes_entry(parts, _FILENAME_KEY, filename.encode())
                + _bytes_entry(parts, _SOURCE_ID_KEY, source_id.encode()))
        parts += (fmt, self._int(HEIGHT, height), self._int(WIDTH, width), label_part)
        size += len(fmt) + len(parts[-3]) + len(parts[-2]) + len(label_part)
        if dhash is not None:
            if not 0 <= dhash < 1 << 64:
                raise ValueError(f"dhash {dhash} is not a 64-bit unsigned value")
            hash_part = _entry(DHASH, _int64_feature([dhash]))  # _varint writes it as int64 two's complement
            parts.append(hash_part)
            size += len(hash_part)
        return b"".join([b"\x0a", _len(size), *parts])  # Example.features (1)

    def _int(self, key: str, value: int) -> bytes:
        part = self._ints.get((key, value))
        if part is None:
            part = self._ints[(key, value)] = _entry(key, _int64_feature([value]))
        return part

    def _label_entries(self, labels: tuple[int, ...]) -> bytes:
        if len(labels) != len(self._class_names):
            raise ValueError(f"{len(labels)} labels for {len(self._class_names)} tasks")
        texts = []
        for task, label in enumerate(labels):
            names = self._class_names[task]
            if label != UNKNOWN and not 0 <= label < len(names):
                raise ValueError(f"class id {label} of task {task} is outside 0..{len(names) - 1}")
            texts.append(b"" if label == UNKNOWN else names[label].encode())
        return _entry(LABEL, _int64_feature(labels)) + _entry(TEXT, _bytes_feature(texts))


# --------------------------------------------------------------------------- image headers


def image_info(data: bytes) -> tuple[str, int, int]:
    """(format, height, width) from the image's header, without decoding it; PIL for what the header
    reader does not cover. Raises ValueError for bytes that are not an image PIL can open."""
    fmt, size = sniff_format(data), declared_size(data)
    if fmt is not None and size is not None and size[0] > 0 and size[1] > 0:
        return fmt, size[1], size[0]
    return _pil_info(data)


_PIL_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}


def _pil_info(data: bytes) -> tuple[str, int, int]:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = _PIL_FORMATS.get(image.format or "")
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    if fmt is None:
        raise ValueError(f"image format {image.format} cannot be decoded by TensorFlow "
                         f"(expected one of {', '.join(sorted(set(_PIL_FORMATS.values())))})")
    return fmt, height, width


def reencode(data: bytes, max_side: int, quality: int) -> tuple[bytes, int, int]:
    """The image as a JPEG whose longer side is at most `max_side` (aspect ratio kept; never enlarged):
    (bytes, height, width). Greyscale stays greyscale; everything else becomes RGB (alpha dropped)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            image.draft(None, (max_side, max_side))  # DCT scaling: decode big JPEGs at a fraction of the cost
        image = image.convert("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            size = (max(1, min(max_side, round(image.width * scale))),
                    max(1, min(max_side, round(image.height * scale))))
            image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue(), image.height, image.width
