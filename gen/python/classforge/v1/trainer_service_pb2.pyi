from classforge.v1 import common_pb2 as _common_pb2
from classforge.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_STATUS_UNSPECIFIED: _ClassVar[TrainingStatus]
    TRAINING_STATUS_RUNNING: _ClassVar[TrainingStatus]
    TRAINING_STATUS_SUCCEEDED: _ClassVar[TrainingStatus]
    TRAINING_STATUS_FAILED: _ClassVar[TrainingStatus]
    TRAINING_STATUS_STOPPED: _ClassVar[TrainingStatus]
    TRAINING_STATUS_QUEUED: _ClassVar[TrainingStatus]
TRAINING_STATUS_UNSPECIFIED: TrainingStatus
TRAINING_STATUS_RUNNING: TrainingStatus
TRAINING_STATUS_SUCCEEDED: TrainingStatus
TRAINING_STATUS_FAILED: TrainingStatus
TRAINING_STATUS_STOPPED: TrainingStatus
TRAINING_STATUS_QUEUED: TrainingStatus

class Training(_message.Message):
    __slots__ = ("job_id", "status", "progress", "model", "last_checkpoint_uri", "error", "records_uri", "config", "history_uri", "plan")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECORDS_URI_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    HISTORY_URI_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: TrainingStatus
    progress: _events_pb2.TrainingProgress
    model: _common_pb2.ModelRef
    last_checkpoint_uri: str
    error: str
    records_uri: str
    config: _common_pb2.TrainingConfig
    history_uri: str
    plan: _common_pb2.TrainingPlan
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[TrainingStatus, str]] = ..., progress: _Optional[_Union[_events_pb2.TrainingProgress, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., last_checkpoint_uri: _Optional[str] = ..., error: _Optional[str] = ..., records_uri: _Optional[str] = ..., config: _Optional[_Union[_common_pb2.TrainingConfig, _Mapping]] = ..., history_uri: _Optional[str] = ..., plan: _Optional[_Union[_common_pb2.TrainingPlan, _Mapping]] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("job_id", "records_uri", "config")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_URI_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    records_uri: str
    config: _common_pb2.TrainingConfig
    def __init__(self, job_id: _Optional[str] = ..., records_uri: _Optional[str] = ..., config: _Optional[_Union[_common_pb2.TrainingConfig, _Mapping]] = ...) -> None: ...

class StartTrainingResponse(_message.Message):
    __slots__ = ("training",)
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    training: Training
    def __init__(self, training: _Optional[_Union[Training, _Mapping]] = ...) -> None: ...

class GetTrainingRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetTrainingResponse(_message.Message):
    __slots__ = ("training",)
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    training: Training
    def __init__(self, training: _Optional[_Union[Training, _Mapping]] = ...) -> None: ...

class StopTrainingRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StopTrainingResponse(_message.Message):
    __slots__ = ("training",)
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    training: Training
    def __init__(self, training: _Optional[_Union[Training, _Mapping]] = ...) -> None: ...
