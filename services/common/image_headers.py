"""What an encoded image's first bytes say — its format and the pixel size its header declares — read
without decoding anything. Ingest-free services use it where a decode would be wasted or dangerous: the
records builder records each image's size, and the inference service refuses a decompression bomb (a
40-byte PNG may declare 50,000×50,000 pixels) before the model's in-graph decode tries to allocate it.

A header too short or too damaged to read gives None; callers fall back to a real decoder (which then
rejects the image with its own error).
"""

from __future__ import annotations

_SIGNATURES = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
]
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # markers without a length field
_JPEG_SOS = 0xDA


def sniff_format(data: bytes) -> str | None:
    """The image format from its first bytes: jpeg, png, gif, bmp, webp, or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the image's header declares it, or None when the header cannot be read."""
    kind = sniff_format(data)
    if kind == "png":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return _be(data, 16, 4), _be(data, 20, 4)
    elif kind == "gif":
        if len(data) >= 10:
            return _le(data, 6, 2), _le(data, 8, 2)
    elif kind == "bmp":
        if len(data) >= 26:
            if _le(data, 14, 4) == 12:  # BITMAPCOREHEADER: 16-bit sizes
                return _le(data, 18, 2), _le(data, 20, 2)
            return abs(_le(data, 18, 4, signed=True)), abs(_le(data, 22, 4, signed=True))  # height < 0: top-down
    elif kind == "webp":
        return _webp_size(data)
    elif kind == "jpeg":
        return _jpeg_size(data)
    return None


def _be(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at:at + size], "big")


def _le(data: bytes, at: int, size: int, signed: bool = False) -> int:
    return int.from_bytes(data[at:at + size], "little", signed=signed)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + _le(data, 24, 3), 1 + _le(data, 27, 3)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = _le(data, 21, 4)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _JPEG_STANDALONE:
            at += 2
            continue
        if marker in _JPEG_SOF:
            if at + 9 > len(data):
                return None
            return _be(data, at + 7, 2), _be(data, at + 5, 2)
        if marker == _JPEG_SOS:  # a scan before any frame header: malformed
            return None
        at += 2 + _be(data, at + 2, 2)
    return None
