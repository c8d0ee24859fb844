"""Readiness of a local directory a service writes to (a local object store, the model base path)."""

from __future__ import annotations

import os
from pathlib import Path

from services.common.errors import Unavailable


def require_writable_dir(path: Path, what: str) -> None:
    """Creates `path` when missing; Unavailable naming `what` when it cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Unavailable(f"{what} {path} cannot be created: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise Unavailable(f"{what} {path} is not writable")
