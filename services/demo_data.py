"""Real image data that ships with the machine, written out the way users have it (one folder
per label). Nothing is downloaded: Fashion-MNIST comes from the Debian package
`dataset-fashion-mnist`, digits from scikit-learn."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.errors import FailedPrecondition

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str = "train", root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) for split "train" (60,000) or "test" (10,000)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FailedPrecondition(f"{images_path} is missing: install it with `apt-get install dataset-fashion-mnist`")
    return _read_idx(images_path), _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")


def load_digits(size: int = 32) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """scikit-learn's 1,797 digits (8x8, 0..16) as uint8 greyscale images upscaled to size x size."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    small = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in small])
    return images, digits.target.astype(np.uint8), tuple(str(d) for d in range(10))


def write_image_folders(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], out_dir: Path,
                        *, per_class: int | None = None, image_format: str = "png") -> int:
    """Writes images as out_dir/<class name>/<index>.<format>; returns how many were written.
    per_class caps each class (the first images in order), for quick subsets."""
    counts: dict[int, int] = {}
    written = 0
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        label = int(label)
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        folder = out_dir / class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.{image_format}")
        counts[label] = counts.get(label, 0) + 1
        written += 1
    return written
