from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUILD_STATUS_UNSPECIFIED: _ClassVar[BuildStatus]
    BUILD_STATUS_RUNNING: _ClassVar[BuildStatus]
    BUILD_STATUS_SUCCEEDED: _ClassVar[BuildStatus]
    BUILD_STATUS_FAILED: _ClassVar[BuildStatus]
BUILD_STATUS_UNSPECIFIED: BuildStatus
BUILD_STATUS_RUNNING: BuildStatus
BUILD_STATUS_SUCCEEDED: BuildStatus
BUILD_STATUS_FAILED: BuildStatus

class RecordsOptions(_message.Message):
    __slots__ = ("shard_bytes", "max_side", "jpeg_quality")
    SHARD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    shard_bytes: int
    max_side: int
    jpeg_quality: int
    def __init__(self, shard_bytes: _Optional[int] = ..., max_side: _Optional[int] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class Build(_message.Message):
    __slots__ = ("build_id", "dataset_id", "status", "records_uri", "train_examples", "val_examples", "shard_count", "error")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_URI_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    dataset_id: str
    status: BuildStatus
    records_uri: str
    train_examples: int
    val_examples: int
    shard_count: int
    error: str
    def __init__(self, build_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., status: _Optional[_Union[BuildStatus, str]] = ..., records_uri: _Optional[str] = ..., train_examples: _Optional[int] = ..., val_examples: _Optional[int] = ..., shard_count: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class BuildRecordsRequest(_message.Message):
    __slots__ = ("dataset_id", "options")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    options: RecordsOptions
    def __init__(self, dataset_id: _Optional[str] = ..., options: _Optional[_Union[RecordsOptions, _Mapping]] = ...) -> None: ...

class BuildRecordsResponse(_message.Message):
    __slots__ = ("build",)
    BUILD_FIELD_NUMBER: _ClassVar[int]
    build: Build
    def __init__(self, build: _Optional[_Union[Build, _Mapping]] = ...) -> None: ...

class GetBuildRequest(_message.Message):
    __slots__ = ("build_id",)
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    def __init__(self, build_id: _Optional[str] = ...) -> None: ...

class GetBuildResponse(_message.Message):
    __slots__ = ("build",)
    BUILD_FIELD_NUMBER: _ClassVar[int]
    build: Build
    def __init__(self, build: _Optional[_Union[Build, _Mapping]] = ...) -> None: ...
