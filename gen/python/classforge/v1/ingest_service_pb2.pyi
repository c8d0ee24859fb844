from classforge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArchiveFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARCHIVE_FORMAT_UNSPECIFIED: _ClassVar[ArchiveFormat]
    ARCHIVE_FORMAT_ZIP: _ClassVar[ArchiveFormat]
    ARCHIVE_FORMAT_TAR: _ClassVar[ArchiveFormat]
    ARCHIVE_FORMAT_TAR_GZ: _ClassVar[ArchiveFormat]
ARCHIVE_FORMAT_UNSPECIFIED: ArchiveFormat
ARCHIVE_FORMAT_ZIP: ArchiveFormat
ARCHIVE_FORMAT_TAR: ArchiveFormat
ARCHIVE_FORMAT_TAR_GZ: ArchiveFormat

class CreateDatasetHeader(_message.Message):
    __slots__ = ("options", "archive_format", "source", "request_id")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    options: _common_pb2.DatasetOptions
    archive_format: ArchiveFormat
    source: _common_pb2.DataSource
    request_id: str
    def __init__(self, options: _Optional[_Union[_common_pb2.DatasetOptions, _Mapping]] = ..., archive_format: _Optional[_Union[ArchiveFormat, str]] = ..., source: _Optional[_Union[_common_pb2.DataSource, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: CreateDatasetHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[CreateDatasetHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class LabelStatistics(_message.Message):
    __slots__ = ("task", "label", "count", "train_count", "balanced_train_count", "val_count", "test_count", "bytes")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    BALANCED_TRAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    VAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    task: str
    label: str
    count: int
    train_count: int
    balanced_train_count: int
    val_count: int
    test_count: int
    bytes: int
    def __init__(self, task: _Optional[str] = ..., label: _Optional[str] = ..., count: _Optional[int] = ..., train_count: _Optional[int] = ..., balanced_train_count: _Optional[int] = ..., val_count: _Optional[int] = ..., test_count: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class RejectedFile(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DatasetReport(_message.Message):
    __slots__ = ("dataset_id", "labels", "rejected", "duplicate_count", "label_conflict_count", "ratio_before", "ratio_after")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABEL_CONFLICT_COUNT_FIELD_NUMBER: _ClassVar[int]
    RATIO_BEFORE_FIELD_NUMBER: _ClassVar[int]
    RATIO_AFTER_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    labels: _containers.RepeatedCompositeFieldContainer[LabelStatistics]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedFile]
    duplicate_count: int
    label_conflict_count: int
    ratio_before: float
    ratio_after: float
    def __init__(self, dataset_id: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[LabelStatistics, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[RejectedFile, _Mapping]]] = ..., duplicate_count: _Optional[int] = ..., label_conflict_count: _Optional[int] = ..., ratio_before: _Optional[float] = ..., ratio_after: _Optional[float] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("ref", "image_count", "train_count", "val_count", "test_count", "rejected_count")
    REF_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    VAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.DatasetRef
    image_count: int
    train_count: int
    val_count: int
    test_count: int
    rejected_count: int
    def __init__(self, ref: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., image_count: _Optional[int] = ..., train_count: _Optional[int] = ..., val_count: _Optional[int] = ..., test_count: _Optional[int] = ..., rejected_count: _Optional[int] = ...) -> None: ...

class CreateDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDatasetReportRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class GetDatasetReportResponse(_message.Message):
    __slots__ = ("report", "markdown")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    report: DatasetReport
    markdown: str
    def __init__(self, report: _Optional[_Union[DatasetReport, _Mapping]] = ..., markdown: _Optional[str] = ...) -> None: ...

class RelabelDatasetRequest(_message.Message):
    __slots__ = ("dataset_id", "corrections", "new_dataset_id")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEW_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    corrections: bytes
    new_dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ..., corrections: _Optional[bytes] = ..., new_dataset_id: _Optional[str] = ...) -> None: ...

class RelabelDatasetResponse(_message.Message):
    __slots__ = ("dataset", "parent_dataset_id", "relabeled_count", "dropped_count", "kept_count")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARENT_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    RELABELED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_COUNT_FIELD_NUMBER: _ClassVar[int]
    KEPT_COUNT_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    parent_dataset_id: str
    relabeled_count: int
    dropped_count: int
    kept_count: int
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ..., parent_dataset_id: _Optional[str] = ..., relabeled_count: _Optional[int] = ..., dropped_count: _Optional[int] = ..., kept_count: _Optional[int] = ...) -> None: ...
