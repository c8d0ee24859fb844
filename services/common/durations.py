"""Durations a person writes: "600" or "600s", "10m", "1h30m", "1.5h". One parser for the CLI
(`--time-budget`), the jobs service's spec validation and the trainer."""

from __future__ import annotations

import math
import re

from services.common.errors import InvalidArgument, shown

_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}
MAX_SECONDS = 30 * 24 * 3600.0  # a month: anything longer is a typo


def parse_duration(text: str, field: str = "time_budget") -> float:
    """Seconds in `text`; 0.0 for an empty string (no duration). InvalidArgument naming `field` otherwise."""
    text = text.strip().lower()
    if not text:
        return 0.0
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    else:
        parts = _PART.findall(text)
        units = [unit for _, unit in parts]
        if "".join(f"{n}{u}" for n, u in parts) != text or len(set(units)) != len(units):
            raise InvalidArgument(field, f"{shown(text)} is not a duration; write seconds (600) or "
                                         f"hours/minutes/seconds such as 10m, 1h30m or 90s")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_SECONDS:
        raise InvalidArgument(field, f"{shown(text)} must be more than 0 and at most 30 days")
    return seconds


def format_duration(seconds: float) -> str:
    """600 -> "10m 00s"; 42.4 -> "42s"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
