"""The limits that protect ingest from what one dataset may bring in. What a caller may ask of ingest
(IngestOptions) is shared with jobs: services/common/dataset_options.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLimits:
    """Bounds on what one dataset may bring in, so an upload cannot fill the disk or memory."""

    max_upload_bytes: int = 2 * 1024**3  # the spooled archive as sent
    max_file_bytes: int = 64 * 1024**2  # one file inside an archive or under a prefix
    max_total_bytes: int = 8 * 1024**3  # everything an archive or prefix expands to
    max_files: int = 2_000_000  # entries in an archive, objects under a prefix


DEFAULT_LIMITS = SourceLimits()
