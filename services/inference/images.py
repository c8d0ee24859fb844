"""Cheap checks of an encoded image before it is sent to the model server: its format from the first
bytes, and the pixel size its header declares — read from a few header bytes, nothing decoded.

The size check is the decompression-bomb guard of every protocol: a 40-byte PNG may declare
50,000×50,000 pixels, and the model's in-graph decode would try to allocate 7.5 GB for it.
A header too short or too damaged to read gives no size; such an image is left to the model's
decode, which rejects it as INVALID_ARGUMENT.
"""

from __future__ import annotations

_SIGNATURES = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
]
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); they carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# JPEG markers without a length field.
_JPEG_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}


def sniff_image(data: bytes) -> str | None:
    """The image format from its first bytes (JPEG, PNG, GIF, BMP, WebP), or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _u16be(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 2], "big")


def _le(data: bytes, at: int, size: int, signed: bool = False) -> int:
    return int.from_bytes(data[at:at + size], "little", signed=signed)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the image's header declares it, or None when the header cannot be read."""
    kind = sniff_image(data)
    if kind == "png":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
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
            return _u16be(data, at + 7), _u16be(data, at + 5)
        at += 2 + _u16be(data, at + 2)
    return None
