"""Object storage for artefacts: the `ObjectStore` interface (`interface`), a directory of plain files
(`local`) and MinIO / S3 (`minio`). The MinIO adapter is not imported here, so that code handed a
store never loads the MinIO client: `open_object_store` imports it only for an s3:// URL."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from services.common.errors import InvalidArgument
from services.common.storage.interface import (
    PART_SIZE,
    ObjectCorrupted,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    VersionMismatch,
    check_key,
)
from services.common.storage.local import LocalObjectStore

__all__ = [
    "PART_SIZE", "LocalObjectStore", "ObjectCorrupted", "ObjectInfo", "ObjectNotFound", "ObjectStore",
    "VersionMismatch", "check_key", "open_object_store",
]


def open_object_store(url: str, *, access_key: str = "", secret_key: str = "",
                      secure: bool = False, ca_bundle: str = "") -> ObjectStore:
    """The store a URL names: `s3://HOST:PORT/BUCKET` (MinIO or S3), `file:///abs/dir` or a plain
    directory path (local). `ca_bundle`: PEM CAs that verify an s3:// store's TLS certificate."""
    if url and "://" not in url:
        return LocalObjectStore(url)
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path:
        return LocalObjectStore(unquote(parts.path))
    bucket = parts.path.strip("/")
    if parts.scheme == "s3" and parts.netloc and bucket and "/" not in bucket:
        from services.common.storage.minio import MinioObjectStore  # here: only s3:// needs the client

        return MinioObjectStore(parts.netloc, access_key, secret_key, bucket, secure=secure, ca_bundle=ca_bundle)
    raise InvalidArgument("url", f"{url!r}: expected s3://HOST:PORT/BUCKET, file:///absolute/dir or a "
                                 f"directory path")
