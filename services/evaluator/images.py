"""Small image helpers shared by the gallery, the mislabel review and the report (PIL only)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

THUMBNAIL_SIDE = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._ +-]")


def decode(encoded: bytes) -> Image.Image:
    """Encoded bytes -> RGB image (first frame of an animation), as the serving graph decodes them."""
    image = Image.open(io.BytesIO(encoded))
    image.seek(0)
    return image.convert("RGB")


def save_png(encoded: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    decode(encoded).save(path, format="PNG")
    return path


def save_thumbnail(encoded: bytes, path: Path, side: int = THUMBNAIL_SIDE) -> Path:
    """A PNG no larger than side x side; small images are scaled up (nearest) so they stay visible."""
    image = decode(encoded)
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def safe_names(classes: list[str]) -> list[str]:
    """One folder name per class: unsafe characters become '_', and names that clash (or are empty,
    '.' or '..') get the class id appended, so every class has its own folder."""
    names, seen = [], set()
    for i, cls in enumerate(classes):
        name = _UNSAFE.sub("_", cls).strip()[:80]
        if name in ("", ".", "..") or name.lower() in seen:
            name = f"{name or 'class'}_{i}"
        seen.add(name.lower())
        names.append(name)
    return names
