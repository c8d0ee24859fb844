"""Configuration of the tfrecords service: the shared service settings plus the builder's own."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, env
from services.tfrecords.builder import DEFAULT_MIN_SHARDS


@dataclass(frozen=True)
class TFRecordsSettings(ServiceSettings):
    workers: int = env("CLASSFORGE_TFRECORDS_WORKERS", 0,
                       "encoding worker processes per build; 0 means one per CPU")
    read_parallelism: int = env("CLASSFORGE_TFRECORDS_READ_PARALLELISM", DEFAULT_MIN_SHARDS,
                                "shards read at once by the trainer: every split gets at least this many shards")
    scratch_dir: str = env("CLASSFORGE_TFRECORDS_SCRATCH_DIR", "",
                           "local directory for shards before their upload (two shards at most per build); "
                           "empty means the system temp directory")
    concurrent_builds: int = env("CLASSFORGE_TFRECORDS_CONCURRENT_BUILDS", 1,
                                 "builds run at the same time (each uses all its worker processes)")
