"""What a caller may ask of ingest when a dataset is prepared (DatasetOptions), and its validation: shared
by ingest, which applies it, and jobs, which checks a JobSpec at submit with the same rules.

`IngestOptions.from_proto` applies the proto's "0 means the default" rules and validates every
field, raising InvalidArgument that names the field by its path in the request
(`header.options.val_fraction`, `spec.dataset.max_class_ratio`, …). Code that builds options
directly (the CLI) uses literal values: there `val_fraction=0` really means no validation split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from classforge.v1 import common_pb2
from services.common.errors import InvalidArgument

DEFAULT_MAX_CLASS_RATIO = 5.0
DEFAULT_VAL_FRACTION = 0.1
# Pillow warns above 89.5 MP and refuses above twice that; a training image has no business being
# anywhere near either, so the default bound is lower. A caller may raise it up to Pillow's refusal.
DEFAULT_MAX_PIXELS = 50_000_000
PILLOW_HARD_LIMIT = 2 * 89_478_485


@dataclass(frozen=True)
class IngestOptions:
    max_class_ratio: float = DEFAULT_MAX_CLASS_RATIO  # delta: largest/smallest class in train, after balancing
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = 0.0
    seed: int = 0
    max_per_class: int = 0  # cap undersampling the training split's majority classes; 0 = no cap
    min_side: int = 0  # images with a shorter side are rejected; 0 = no minimum
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard

    def validated(self, field: str = "options") -> IngestOptions:
        """Returns self, or raises InvalidArgument naming `field`.<option> for the first bad value."""
        ratio = self.max_class_ratio
        if not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio < 1:
            raise InvalidArgument(f"{field}.max_class_ratio",
                                  f"a largest/smallest class ratio bound must be a number >= 1, got {ratio!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value < 1:
                raise InvalidArgument(f"{field}.{name}", f"must be in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise InvalidArgument(f"{field}.test_fraction",
                                  f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                                  f"leaves no image to train on; keep the sum below 1")
        for name in ("max_per_class", "min_side"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{field}.{name}", f"must not be negative, got {getattr(self, name)}")
        if not 1 <= self.max_pixels <= PILLOW_HARD_LIMIT:
            raise InvalidArgument(f"{field}.max_pixels",
                                  f"must be between 1 and {PILLOW_HARD_LIMIT} (0 means the default "
                                  f"{DEFAULT_MAX_PIXELS}), got {self.max_pixels}")
        if self.min_side and self.min_side * self.min_side > self.max_pixels:
            raise InvalidArgument(f"{field}.min_side",
                                  f"a {self.min_side}x{self.min_side} image already exceeds max_pixels "
                                  f"{self.max_pixels}: no image could pass both")
        return self

    @classmethod
    def from_proto(cls, options: common_pb2.DatasetOptions, field: str) -> IngestOptions:
        """The proto's zero values mean "the default" for max_class_ratio, val_fraction and max_pixels."""
        if options.max_class_ratio < 0:
            raise InvalidArgument(f"{field}.max_class_ratio",
                                  f"must be >= 1 (or 0 for the default {DEFAULT_MAX_CLASS_RATIO:g}), "
                                  f"got {options.max_class_ratio:g}")
        if options.max_pixels < 0:
            raise InvalidArgument(f"{field}.max_pixels", f"must not be negative, got {options.max_pixels}")
        return cls(
            max_class_ratio=options.max_class_ratio or DEFAULT_MAX_CLASS_RATIO,
            val_fraction=options.val_fraction or DEFAULT_VAL_FRACTION,
            test_fraction=options.test_fraction,
            seed=options.seed,
            max_per_class=options.max_per_class,
            min_side=options.min_side,
            max_pixels=options.max_pixels or DEFAULT_MAX_PIXELS,
        ).validated(field)

    def to_proto(self) -> common_pb2.DatasetOptions:
        return common_pb2.DatasetOptions(**asdict(self))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IngestOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
