"""The ingest service's settings: the shared service settings plus its CLASSFORGE_INGEST_* limits."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, SettingsError, env
from services.ingest.confine import ROOTS_VARIABLE, parse_roots
from services.ingest.options import SourceLimits

_DEFAULT_LIMITS = SourceLimits()


@dataclass(frozen=True)
class IngestSettings(ServiceSettings):
    max_upload_bytes: int = env("CLASSFORGE_INGEST_MAX_UPLOAD_BYTES", _DEFAULT_LIMITS.max_upload_bytes,
                                "largest archive CreateDataset accepts (RESOURCE_EXHAUSTED beyond)")
    max_file_bytes: int = env("CLASSFORGE_INGEST_MAX_FILE_BYTES", _DEFAULT_LIMITS.max_file_bytes,
                              "largest single image file; larger ones are rejected (too-large)")
    max_total_bytes: int = env("CLASSFORGE_INGEST_MAX_TOTAL_BYTES", _DEFAULT_LIMITS.max_total_bytes,
                               "most bytes an archive or a prefix may expand to")
    max_files: int = env("CLASSFORGE_INGEST_MAX_FILES", _DEFAULT_LIMITS.max_files,
                         "most entries in an archive or objects under a prefix")
    workers: int = env("CLASSFORGE_INGEST_WORKERS", 0,
                       "CPUs validating images (worker processes plus the calling thread); 0 means all")
    work_dir: str = env("CLASSFORGE_INGEST_WORK_DIR", "", "where uploads are spooled and extracted; "
                                                          "empty means the system temp folder")
    local_roots: str = env("CLASSFORGE_INGEST_LOCAL_ROOTS", "",
                           "':'-separated folders a local_path source must lie in (links resolved); "
                           "empty allows no local path at all")

    def __post_init__(self) -> None:
        if (base := getattr(super(), "__post_init__", None)) is not None:
            base()
        # A relative root would mean the service's working folder, which no operator means.
        for root in parse_roots(self.local_roots):
            if not root.startswith("/"):
                raise SettingsError(f"{ROOTS_VARIABLE}: {root!r} is not an absolute path; give ':'-separated "
                                    f"absolute folders, or leave it empty to allow no local path")

    def local_root_list(self) -> list[str]:
        return parse_roots(self.local_roots)

    def limits(self) -> SourceLimits:
        return SourceLimits(self.max_upload_bytes, self.max_file_bytes, self.max_total_bytes, self.max_files)
