"""The model base path as TF Serving reads it: `<base>/<model>/<integer version>/saved_model.pb …`.

Writers follow two rules so that TF Serving (which polls this directory) never loads a half-copied
version: a version is assembled in a hidden sibling directory (a name that is not an integer, which
TF Serving ignores) with `saved_model.pb` written last, then renamed into place in one step. Removing a
version is the reverse: rename it to a hidden name first, then delete the files.

Each published version carries `classforge-publish.json` (job id, source URI, time): ListModels shows
the job, and a redelivered event finds a version that was installed before a crash.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from services.common import serving_signature as contract
from services.common.errors import InvalidArgument, NotFound
from services.common.storage import ObjectStore
from services.common.writable_dir import require_writable_dir

SAVED_MODEL_PB = "saved_model.pb"
MARKER = "classforge-publish.json"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str, field: str = "model_name") -> str:
    if not MODEL_NAME.match(name or ""):
        raise InvalidArgument(field, f"{name!r} is not a valid model name (letters, digits, '_', '.', '-'; "
                                     f"starting with a letter or digit; at most 128 characters)")
    return name


class ModelRepository:
    def __init__(self, base_path: str | os.PathLike):
        self.base_path = Path(base_path)
        self._labels: dict[tuple[str, int], dict[str, list[str]]] = {}

    def check(self) -> None:
        """Readiness: the base path exists (created if missing) and is writable."""
        require_writable_dir(self.base_path, "model base path")

    def models(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.base_path) if e.is_dir() and MODEL_NAME.match(e.name))
        except FileNotFoundError:
            return []

    def model_dir(self, name: str) -> Path:
        return self.base_path / check_model_name(name)

    def exists(self, name: str) -> bool:
        return self.model_dir(name).is_dir()

    def versions(self, name: str) -> list[int]:
        """Complete versions (integer directory with saved_model.pb), ascending."""
        try:
            entries = list(os.scandir(self.model_dir(name)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(e.name) for e in entries
                      if e.name.isdigit() and e.is_dir() and (Path(e.path) / SAVED_MODEL_PB).is_file())

    def marker(self, name: str, version: int) -> dict:
        try:
            return json.loads((self.model_dir(name) / str(version) / MARKER).read_text())
        except (OSError, ValueError):
            return {}

    def find_job(self, name: str, job_id: str) -> int | None:
        for version in self.versions(name):
            if self.marker(name, version).get("job_id") == job_id:
                return version
        return None

    def labels(self, name: str, version: int) -> dict[str, list[str]]:
        """Task -> class names, from the version's assets/labels.json (cached: a version never changes)."""
        key = (name, version)
        cached = self._labels.get(key)
        if cached is None:
            path = self.model_dir(name) / str(version) / "assets" / contract.LABELS_ASSET
            try:
                data = json.loads(path.read_text())
                cached = {task["name"]: list(task["classes"]) for task in data.get("tasks", [])}
            except (OSError, ValueError, KeyError, TypeError):
                cached = {}
            if len(self._labels) > 256:
                self._labels.clear()
            self._labels[key] = cached
        return cached

    def install(self, name: str, store: ObjectStore, prefix: str, marker: dict,
                on_file: Callable[[str], None] | None = None) -> int:
        """Copies the SavedModel under `prefix` in the object store as the next version of `name`;
        returns the version. saved_model.pb is written last, into a hidden directory that is renamed
        into place once complete. `on_file(relative path)` is called after each file is written."""
        keys = [info.key for info in store.list(prefix)]
        relative = [key[len(prefix):] for key in keys]
        if SAVED_MODEL_PB not in relative:
            raise NotFound("SavedModel", f"{prefix}{SAVED_MODEL_PB}")
        model_dir = self.model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = model_dir / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            ordered = sorted(r for r in relative if r != SAVED_MODEL_PB) + [SAVED_MODEL_PB]
            for rel in ordered:
                if rel == SAVED_MODEL_PB:  # the marker is not part of the SavedModel; written just before
                    (staging / MARKER).write_text(json.dumps(marker))
                store.get_file(prefix + rel, staging / rel)
                if on_file is not None:
                    on_file(rel)
            while True:
                version = max(self._all_numbered(model_dir), default=0) + 1
                try:
                    os.rename(staging, model_dir / str(version))
                    return version
                except OSError:  # another publisher took this number first
                    if not (model_dir / str(version)).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _all_numbered(model_dir: Path) -> list[int]:
        # Incomplete numbered directories count too: a number is never reused while its directory exists.
        return [int(e.name) for e in os.scandir(model_dir) if e.name.isdigit()]

    def retire(self, name: str, version: int) -> None:
        """Removes a version: hidden by a rename first, so the model server sees it vanish in one step."""
        source = self.model_dir(name) / str(version)
        hidden = self.model_dir(name) / f".retired-{version}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(source, hidden)
        except FileNotFoundError:
            return
        shutil.rmtree(hidden, ignore_errors=True)
        self._labels.pop((name, version), None)

    def clean_staging(self, name: str, older_than_seconds: float = 3600) -> None:
        """Deletes leftovers of crashed copies."""
        try:
            entries = list(os.scandir(self.model_dir(name)))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith((".incoming-", ".retired-")) and \
                    time.time() - entry.stat().st_mtime > older_than_seconds:
                shutil.rmtree(entry.path, ignore_errors=True)
